"""The web dashboard (`conveyor flower`, `conveyor dashboard`): workers, queues, tasks, actions.

`create_app(app)` is a Starlette application: an HTML page that refreshes
itself from the JSON API, the API (`/api/...`), and Prometheus metrics at
`/metrics`. With `basic_auth`, every route asks for HTTP basic credentials.
"""

from conveyor.dashboard.server import create_app

__all__ = ["create_app"]
