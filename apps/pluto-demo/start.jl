# Start Pluto 0.17.7 for swarmpool: run the notebook, check from Pluto's own cell state that every cell ran
# without error, warm the paths a student's browser takes (over Pluto's own WebSocket protocol), put the
# notebook back exactly as it was, and only then print the readiness marker. An errored notebook exits 1.
#
# Pluto 0.17.7 has no base_url: the gateway strips /i/<id> (catalogue: strip_prefix = true). The instance id
# in the URL is the capability, so Pluto's secret is off; students cannot browse or write files through Pluto.
import Pluto
import HTTP
import UUIDs

const PORT = parse(Int, get(ENV, "SWARMPOOL_PLUTO_PORT", "1234"))
const NOTEBOOK = get(ENV, "SWARMPOOL_NOTEBOOK", joinpath(@__DIR__, "webapp.jl"))
# A fixed notebook id: the deep link is `edit?id=<this>`, no redirect on the student's click.
const NOTEBOOK_ID = UUIDs.UUID(get(ENV, "SWARMPOOL_NOTEBOOK_ID", "5a1f0000-0000-4000-8000-00000000c0de"))
# One Julia process (the default) instead of a server plus a worker: about half the memory, but a runaway
# cell cannot be interrupted (the student's page stops answering; a new session is one click away).
const DISTRIBUTED = get(ENV, "SWARMPOOL_PLUTO_DISTRIBUTED", "0") in ("1", "true", "yes")
const MARKER = get(ENV, "SWARMPOOL_READY_MARKER", "swarmpool: pluto-demo notebook executed")
const WARM = get(ENV, "SWARMPOOL_PLUTO_WARM", "1") in ("1", "true", "yes")
# the image build runs start.jl once to record what Julia compiles (for the system image), then it ends here
const EXIT_WHEN_READY = get(ENV, "SWARMPOOL_PLUTO_EXIT_WHEN_READY", "0") in ("1", "true", "yes")

# Pluto's own package manager would give the notebook an empty environment and Pkg.add from a registry
# (there is none): the notebook uses the image's environment (JULIA_PROJECT) instead.
@eval Pluto use_plutopkg(topology::NotebookTopology) = false

options = Pluto.Configuration.from_flat_kwargs(;
    host = "0.0.0.0",
    port = PORT,
    launch_browser = false,
    dismiss_update_notification = true,
    show_file_system = false,
    disable_writing_notebook_files = true,  # a student's edits never reach the image's file
    require_secret_for_access = false,
    require_secret_for_open_links = false,
    workspace_use_distributed = DISTRIBUTED,
)
session = Pluto.ServerSession(; options = options)

"Cells not ready to be handed out: errored, still running or queued (empty: the notebook is executed)."
function not_ready(notebook)
    [(i, cell) for (i, cell) in enumerate(notebook.cells) if cell.errored || cell.running || cell.queued]
end

function fail(notebook, why)
    for (i, cell) in not_ready(notebook)
        state = cell.errored ? "errored" : cell.running ? "running" : "queued"
        println(stderr, "swarmpool: cell $i ($(cell.cell_id)) $state: ", first(repr(cell.output.body), 400))
    end
    println(stderr, "swarmpool: not ready: $why")
    flush(stderr)
    exit(1)
end

function wait_until(f, what; timeout = 120.0)
    deadline = time() + timeout
    while !f()
        time() > deadline && error("timed out after $(timeout) s waiting for $what")
        sleep(0.02)
    end
end

started = time()
server = @async Pluto.run(session)
notebook = Pluto.SessionActions.open(session, NOTEBOOK; run_async = false, notebook_id = NOTEBOOK_ID)
isempty(not_ready(notebook)) || fail(notebook, "the notebook did not run cleanly")
executed = time()
wait_until("Pluto's HTTP server"; timeout = 300) do
    istaskdone(server) && error("Pluto's server stopped: $(server.result)")
    try
        HTTP.get("http://127.0.0.1:$PORT/ping"; retry = false, readtimeout = 5).status == 200
    catch
        false
    end
end
serving = time()

"Cells with a `@bind name ...` at their top, with the bound names."
bond_cells(notebook) = [(cell, Symbol(m[1])) for cell in notebook.cells for m in eachmatch(r"^\s*@bind\s+(\w+)"m, cell.code)]

"""What a browser sends for bond `name`: the value it sends on load (the one whose transformed value the
notebook already holds) and two other values for moves; nothing for a widget that names no possible values
(a plain <input>: it is not warmed)."""
function browser_values(notebook, name::Symbol)
    Pluto.WorkspaceManager.eval_fetch_in_workspace((session, notebook), quote
        let runner = Main.PlutoRunner, possible = runner.possible_bond_values($(QuoteNode(name)))
            if possible isa Symbol || length(possible) < 2
                nothing
            else
                values = collect(possible)
                i = findfirst(v -> (runner.transform_bond_value($(QuoteNode(name)), v) == $name) === true, values)
                i === nothing ? nothing : (values[i], (values[mod1(i + 3, length(values))], values[mod1(i + 1, length(values))]))
            end
        end
    end)
end

"""Be a browser once: load the editor page and its assets, connect over Pluto's WebSocket, ask for the
notebook, send each bond's value on load (an "add" Pluto skips, as it equals what the notebook holds) and
two moves, then send the value of load again and forget the bond: the notebook is as it was."""
function warm_up(notebook)
    base = "http://127.0.0.1:$PORT/"
    page = String(HTTP.get(base * "edit?id=$(notebook.notebook_id)"; retry = false).body)
    for asset in unique(m[1] for m in eachmatch(r"(?:src|href)=\"([\w.-]+\.(?:js|css))\"", page))
        HTTP.get(base * asset; retry = false, status_exception = false)
    end
    last_run(cell) = cell.output.last_run_timestamp
    client_id = "swarmpool-warm-up"
    HTTP.WebSockets.open("ws://127.0.0.1:$PORT/"; binary = true) do ws
        reader = @async try
            while !eof(ws)
                Pluto.WebsocketFix.readmessage(ws)
            end
        catch
        end
        n = Ref(0)
        send(type, body) = write(ws, Pluto.pack(Dict("type" => type, "client_id" => client_id,
            "request_id" => string(n[] += 1), "notebook_id" => string(notebook.notebook_id), "body" => body)))
        # messages go through Pluto.pack/unpack, so values arrive typed as a browser's would (an Int stays an Int)
        send("connect", Dict())
        send("update_notebook", Dict("updates" => []))
        send("complete", Dict("query" => "sq"))  # Pluto's editor does this once on load
        for (cell, name) in bond_cells(notebook)
            values = browser_values(notebook, name)
            values === nothing && continue
            on_load, moves = values
            patch(op, value) = Dict("updates" => [Dict("op" => op, "path" => ["bonds", string(name)],
                                                      "value" => Dict("value" => value))])
            send("update_notebook", patch("add", on_load))
            dependents = Pluto.where_referenced(notebook, notebook.topology, Set([name]))
            for value in (moves..., on_load)
                before = Dict(c => last_run(c) for c in dependents)
                send("update_notebook", patch("replace", value))
                wait_until("the cells that use $name to run again for $(repr(value))") do
                    all(c -> last_run(c) != before[c], dependents) && isempty(not_ready(notebook))
                end
            end
            delete!(notebook.bonds, name)  # a student's browser sends its own value on load
        end
        close(ws)
        wait(reader)
    end
    pop!(session.connected_clients, Symbol(client_id), nothing)
end

if WARM
    warm_up(notebook)
    isempty(not_ready(notebook)) || fail(notebook, "the notebook errored during the warm-up")
end
# What compiling and the warm-up left behind goes back to the system: a warm instance holds only what it uses.
GC.gc(true)
ccall(:malloc_trim, Cint, (Csize_t,), 0)
println("swarmpool: notebook ran in $(round(executed - started; digits=1)) s, server answered after ",
        "$(round(serving - started; digits=1)) s, warm-up took $(round(time() - serving; digits=1)) s")
println(MARKER)
flush(stdout)
EXIT_WHEN_READY && exit(0)
wait(server)
