"""fedq's Hydra config tree: a top-level package beside ``fedq``, ``clients`` and ``server``, so that the wheel and
the app bundle ``flwr run .`` builds carry it, and Hydra reads it as ``pkg://configs`` from any folder."""
