"""The dashboard (issue 14): server-rendered pages on port 3001 at ``/dashboard``, reading
everything from the orchestrator's API (`conclave.dashboard.app.create_dashboard`)."""
