"""Edge deployment: CPU-ready variants of a trained model, built, saved, loaded and measured side by side.

``python -m fedq.deploy ckpt=PATH`` (see ``__main__``). One module per variant,
each implementing ``fedq.deploy.variant.Variant`` (build from a checkpoint into a
folder, load from it, translate); ``registry`` names them.
"""
