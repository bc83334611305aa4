"""What a person sees of a running federation: RunView (the model), Prometheus metrics, TensorBoard files and
the live dashboard. See run_view.py for the calls the server core makes."""
