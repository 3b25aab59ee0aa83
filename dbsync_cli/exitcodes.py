"""Process exit codes, one meaning each, so scripts and supervisors can react to the cause."""

OK = 0
FAILURE = 1
CONFIG = 2  # configuration or usage problem
UNREACHABLE = 3  # a configured server could not be reached
BINLOG_PURGED = 10  # the checkpoint's binlog file is gone: re-snapshot needed
BINLOG_SETTINGS = 11  # the site server's binlog settings cannot support capture
SCHEMA = 12  # the schema lacks a configured table or column
ANOTHER_RECEIVER = 13  # another receiver already applies to the same central state schema
DANGLING_REFERENCE = 14  # a site row references a row that does not exist in the site database
ANOTHER_SENDER = 16  # another sender (or capture pipe) of the same home is running
PRIVILEGES = 15  # a database user lacks a privilege its role needs, or has one it must not have; or the broker user
#                   lacks a permission (send) on its destination
NO_ANSWER = 17  # central did not answer a request sent over the broker (verify): is the receiver running?
RECEIVER_BUSY = 18  # the running receiver (holding the applier lock) did not take an operator's action in time
HOME_FULL = 19  # the state directory (home: state.sqlite, logs) has no free space left
BUNDLE_REFUSED = 20  # dbsync import: a bundle not signed by its site's recorded key, of an unknown site, or damaged

#: the codes of faults only an operator can fix: a restart cannot help, so the systemd units do not restart on them
#: (RestartPreventExitStatus, checked by tests/unit/test_systemd_units.py); every other code is worth a restart
OPERATOR_FAULTS = frozenset({CONFIG, UNREACHABLE, BINLOG_PURGED, BINLOG_SETTINGS, SCHEMA, ANOTHER_RECEIVER,
                             DANGLING_REFERENCE, PRIVILEGES, ANOTHER_SENDER, HOME_FULL, BUNDLE_REFUSED})
#: success and the codes a restart (or a later run) may cure: a crash, central not answering, a busy receiver
TRANSIENT = frozenset({OK, FAILURE, NO_ANSWER, RECEIVER_BUSY})
