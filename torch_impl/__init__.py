"""The PyTorch twin: autograd with create_graph=True through the inner loop, torch.optim outside."""
