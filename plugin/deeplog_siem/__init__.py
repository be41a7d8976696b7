"""deeplog-siem: DeepLog-style log anomaly detection and explanation for Elasticsearch and OpenSearch."""

__version__ = "0.1.0"
