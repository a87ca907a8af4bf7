"""The Function App: registers the trigger blueprints. No I/O and no settings are read here."""

import azure.functions as func

from functions import (
    actions,
    alerts,
    api,
    audit_anchor,
    audit_ui,
    blocks,
    cleanup,
    defender_stream,
    emergency,
    notices,
    notifications,
    readiness,
    reconcile,
)

app = func.FunctionApp()
app.register_functions(alerts.bp)
app.register_functions(actions.bp)
app.register_functions(blocks.bp)
app.register_functions(emergency.bp)
app.register_functions(api.bp)
app.register_functions(audit_ui.bp)
app.register_functions(notifications.bp)
app.register_functions(notices.bp)
app.register_functions(defender_stream.bp)
app.register_functions(readiness.bp)
app.register_functions(reconcile.bp)
app.register_functions(cleanup.bp)
app.register_functions(audit_anchor.bp)
