"""``heimer-mlflow watch``: every new version of an opted-in registered model evaluates itself.

The flow, one module per step:

- :mod:`.opt_in`: which registered models want an evaluation (tag ``heimer.data``, optional
  ``heimer.options`` JSON) and which of their versions are waiting for one;
- :mod:`.poller` finds them every few seconds (MLflow keeps no delivery queue, so the poller is
  what guarantees nothing is missed), and recovers jobs whose worker died;
- :mod:`.webhook` hears MLflow's ``model_version.created`` / ``model_version_alias.created``
  webhooks, checks their signature, and queues at once;
- :mod:`.queue`: a Huey queue (SQLite file or Redis) and, in its storage, one claim per
  (model, version, data) so that each version is evaluated once, whoever saw it first;
- :mod:`.job`: a worker evaluates one version in a child process and sets ``heimer.status``;
- :mod:`.service`: ``watch()``, which wires them together (the command line calls it).
"""

from .service import watch  # noqa: F401
