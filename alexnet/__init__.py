"""Reproduce the 2012 AlexNet paper (Krizhevsky, Sutskever, Hinton) with PyTorch."""
