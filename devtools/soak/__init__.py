"""`scripts/soak`: a seeded, randomized run of the whole product on a test bed of its own (three sites, central,
Artemis), with kill -9 faults, a site onboarded mid-run and the field tools of devtools/field, ending with the
independent oracle of devtools/oracle."""
