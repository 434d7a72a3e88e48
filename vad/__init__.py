"""video-anomaly-router: unsupervised video anomaly detection with cost-aware small/large routing.

The package's parts live in the repository's top folders and install under this one name:
`vad.flows` (Prefect flows and the `vad` CLI), `vad.tasks` (the work, by stage: `sources`,
`learning`, `inference`, `evaluation`, `operations`), `vad.models` (one network or fitted model per
file) and `vad.storage` (clip store, score tables, locks). `vad.errors` is the error hierarchy
every layer raises.
"""
