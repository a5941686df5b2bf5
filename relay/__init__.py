"""Arcade relay: Stripe webhooks in, signed QoS 1 MQTT credits out."""
