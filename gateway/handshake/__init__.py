"""The hybrid key agreement: INIT / RESP / FINISH / DONE as pure state machines."""

from gateway.handshake.actions import (
    Action,
    CommitEpoch,
    FetchQkdKeys,
    FetchQkdKeysById,
    HandshakeFailed,
    InstallKey,
    QkdKey,
    QkdPolicy,
    Rejected,
    SendMessage,
)
from gateway.handshake.errors import DecodeError, FailureReason
from gateway.handshake.initiator import InitiatorHandshake, InitiatorState
from gateway.handshake.messages import MessageType, QkdOutcome
from gateway.handshake.params import HandshakeParams
from gateway.handshake.responder import ResponderHandshake, ResponderState

__all__ = [
    "Action",
    "CommitEpoch",
    "DecodeError",
    "FailureReason",
    "FetchQkdKeys",
    "FetchQkdKeysById",
    "HandshakeFailed",
    "HandshakeParams",
    "InitiatorHandshake",
    "InitiatorState",
    "InstallKey",
    "MessageType",
    "QkdKey",
    "QkdOutcome",
    "QkdPolicy",
    "Rejected",
    "ResponderHandshake",
    "ResponderState",
    "SendMessage",
]
