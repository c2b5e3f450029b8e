"""E-signature: the provider interface, the documents sent for signing, and providers.

`LocalSigningProvider` (this package) serves needflow's own signing page where no
DocuSign account is configured; a DocuSign provider implements the same interface.
"""
