"""Signing, trust and verification: `gpg` (the GnuPG seam), `sign` (detached
signatures written atomically), `store` (rkt's trust store of keys by name
prefix), `verify` (a signature checked against the keys trusted for the image's
name), `policy` (when a base, dependency or launched image must be verified).
Imports the aci format layer and below; knows nothing of builds."""
