"""The PyTorch front end: capture a training step at the ATen level and lower it to the IR."""
