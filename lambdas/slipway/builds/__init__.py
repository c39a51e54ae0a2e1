"""Builds: turning an uploaded source into a slug on the platform's builder, then a release."""
