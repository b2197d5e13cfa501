"""The model card templates, one ``<model_type>.md.jinja`` per architecture plus the shared
``_base.md.jinja``; installed as the package ``reid_transformers.model_cards`` (see
``setup.py``), where ``reid_transformers.hub`` reads them."""
