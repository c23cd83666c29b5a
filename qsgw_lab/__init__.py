"""qsgw's lab: network namespaces, whole sites, seed scenarios, the demo and the attacker.

It ships in the same distribution as the appliance but is no part of it: the
lab imports `gateway` and `kms_client`, never the other way round (a test
checks), and the appliance image installs only the product.
"""
