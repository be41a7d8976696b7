"""The one domain error hierarchy.

Every error the product raises on purpose is a `DeeplogError`; the CLI turns it into a one-line message and
a non-zero exit code, and the scheduler records it in the runs index and keeps going.
"""


class DeeplogError(Exception):
    """Base class: the message says what is wrong and, where possible, what to do."""


class ConfigError(DeeplogError):
    """The YAML configuration is invalid; the message names the dotted key."""


class ConnectionFailed(DeeplogError):
    """Elasticsearch/OpenSearch could not be reached or refused the credentials."""


class ServerError(DeeplogError):
    """The embedded server could not be started."""


class ArtifactError(DeeplogError):
    """A model or templater artifact is missing, corrupted or incompatible."""


class DataError(DeeplogError):
    """Input data (a key-sequence file, a sample) is malformed."""


class SinkError(DeeplogError):
    """Anomaly documents could not be written; the checkpoint was not advanced."""


class JobStopped(DeeplogError):
    """A long job ended at a safe point because the process was asked to stop; it published nothing."""


class KibanaError(DeeplogError):
    """Kibana / OpenSearch Dashboards could not be reached or refused the saved-objects import."""


class StateConflict(DeeplogError):
    """Another process holds or has changed a job's state: this one stops without saving over it."""
