"""The Flower App of a deployment: the ServerApp a SuperLink runs and the ClientApp each SuperNode runs, both
tuneforge's `strategy: federated` (see pyproject.toml beside this file)."""

from flwr.serverapp import ServerApp

from tuneforge.strategies.federated.client import client_app as make_client_app
from tuneforge.strategies.federated.deploy import deployed_config, serve_deployed

server_app = ServerApp()
server_app.main()(serve_deployed)
client_app = make_client_app(deployed_config)
