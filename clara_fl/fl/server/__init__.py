"""Code that runs at the FL server: model persistor, server workflows, best-model selection, update filter."""
