"""routes -- the HTTP routes, one small module per group, registered as blueprints."""

from . import adapters, diag, futures, health, inference, training, workers


def register(app):
    app.register_blueprint(health.bp)
    app.register_blueprint(training.bp)
    app.register_blueprint(inference.bp)
    app.register_blueprint(futures.bp)
    app.register_blueprint(adapters.bp)
    app.register_blueprint(workers.bp)
    if app.config.get("CELERIAC_ENABLE_DIAG"):
        app.register_blueprint(diag.bp)
