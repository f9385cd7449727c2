"""Model-card templates, installed as the package ``facezoo.hub_cards`` (see setup.py); read by facezoo.hub.card."""
