"""fedq's Hydra config tree, installed as the package ``fedq.conf`` (see pyproject.toml)."""
