"""Slipway's control plane: the release API and its authorizer (one Lambda asset)."""
