"""Aggregation: the streaming weighted sum, strategies, staleness discounts and differential privacy."""
