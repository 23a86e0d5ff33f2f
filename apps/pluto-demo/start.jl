# Start Pluto for swarmpool: open and run webapp.jl first, print a readiness marker, then serve.
# The prefix (/i/<id>/) comes from SWARMPOOL_PREFIX; swarmpool's prober waits for the marker.
import Pluto

const PREFIX = get(ENV, "SWARMPOOL_PREFIX", "/")
const NOTEBOOK = get(ENV, "SWARMPOOL_NOTEBOOK", joinpath(@__DIR__, "webapp.jl"))

options = Pluto.Configuration.from_flat_kwargs(;
    host = "0.0.0.0",
    port = 1234,
    base_url = PREFIX,
    launch_browser = false,
    dismiss_update_notification = true,
    show_file_system = false,
    # The instance belongs to one student and its id in the URL is the capability: no Pluto secret.
    require_secret_for_access = false,
    require_secret_for_open_links = false,
    # Students get a throwaway copy: never write their edits back into the image's file.
    disable_writing_notebook_files = true,
)
session = Pluto.ServerSession(; options = options)

# run_async=false: returns only after every cell has run, so the marker means "executed".
notebook = Pluto.SessionActions.open(session, NOTEBOOK; run_async = false)
println("swarmpool: pluto-demo notebook executed")
flush(stdout)

# `open?path=...` for this same file redirects to the running notebook instead of opening a second one.
Pluto.run(session)
