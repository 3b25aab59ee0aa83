"""The field bed: test tools that reproduce what clinics' sites do to dbsync in the field.

``link`` (a bad network link as a TCP proxy), ``clock`` (a MariaDB site whose clock runs off), ``editors``
(OpenMRS users editing central's rows) and ``hostile`` (bad frames sent with a real site's broker login).
Test tooling only: not installed with the package.
"""
