"""dbsync: change-data-capture sync of OpenMRS site databases into a central OpenMRS database."""

__version__ = "0.1.0"
