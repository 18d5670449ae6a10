"""The mini experiment: a small base model pretrained offline on symbol, emoji and icon renders."""
