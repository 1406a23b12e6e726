"""Executes provisioning runs. Filled in by the provisioning engine (issue 3)."""
