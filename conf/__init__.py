"""The packaged defaults: base.yaml and experiments/*.yaml (installed as sweepflow.conf)."""
