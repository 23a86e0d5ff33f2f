# Build step of the pluto-demo image (run by its Dockerfile, offline): make Julia 1.5's Pkg work without a
# registry or download, develop every unpacked source tree into one environment, and precompile it.
#   julia setup.jl depot  (as root): /opt/julia-depot + /opt/pluto-env from /opt/pluto-src/*
#   julia setup.jl boot   (as the app user): the notebook worker's boot environment in the user's depot
using Pkg

const SRC = "/opt/pluto-src"
const DEPOT = first(DEPOT_PATH)

function depot()
    # An empty local registry: with none, Pkg clones General from GitHub before doing anything.
    registry = joinpath(DEPOT, "registries", "Local")
    mkpath(registry)
    write(joinpath(registry, "Registry.toml"), """
        name = "Local"
        uuid = "4ae9ab9e-8a27-4f9c-9d5e-4a7cf1c5f5a1"
        repo = ""
        description = "empty: every package of this image is developed from /opt/pluto-src"
        [packages]
        """)
    # MbedTLS_jll wants a binary artifact from GitHub; Debian's julia ships the same libmbed*.so (2.16).
    jll = joinpath(SRC, "MbedTLS_jll")
    if isdir(jll)
        hash = Pkg.Artifacts.artifact_hash("MbedTLS", joinpath(jll, "Artifacts.toml"))
        hash === nothing && error("MbedTLS_jll: no artifact for this platform in its Artifacts.toml")
        libdir = first(filter(isdir, ["/usr/lib/x86_64-linux-gnu/julia", joinpath(Sys.BINDIR, "..", "lib", "julia")]))
        local_artifact = "/opt/mbedtls-artifact"
        mkpath(local_artifact)
        islink(joinpath(local_artifact, "lib")) || symlink(libdir, joinpath(local_artifact, "lib"))
        uuid = Pkg.TOML.parsefile(joinpath(jll, "Project.toml"))["uuid"]
        mkpath(joinpath(DEPOT, "artifacts"))
        # the hash-keyed entry is what Pkg.develop checks; the uuid-keyed one is what the package loads
        write(joinpath(DEPOT, "artifacts", "Overrides.toml"), """
            $(bytes2hex(hash.bytes)) = "$local_artifact"
            [$uuid]
            MbedTLS = "$local_artifact"
            """)
    end
    trees = [joinpath(SRC, d) for d in sort(readdir(SRC)) if isfile(joinpath(SRC, d, "Project.toml"))]
    println("setup: developing $(length(trees)) packages into $(Base.active_project())")
    Pkg.develop([PackageSpec(path = t) for t in trees])
    Pkg.precompile()
    # load what the server and the notebook load, so every cache is written now, not in a container
    for name in ("Pluto", "PlutoUI")
        isdir(joinpath(SRC, name)) && Base.require(Main, Symbol(name))
    end
end

function boot()
    # Pluto's notebook worker resolves this environment at every start (src/runner/Loader.jl); with
    # FuzzyCompletions developed into it, the resolve succeeds offline.
    dir = joinpath(Pkg.envdir(Pkg.depots()[1]), "__pluto_boot_v2_" * string(VERSION))
    Pkg.activate(dir)
    Pkg.develop(PackageSpec(path = joinpath(SRC, "FuzzyCompletions")))
    cp(joinpath(SRC, "Pluto", "src", "runner", "NotebookProcessProject.toml"), joinpath(dir, "Project.toml"); force = true)
    Pkg.resolve()
end

ARGS == ["depot"] ? depot() : ARGS == ["boot"] ? boot() : error("usage: julia setup.jl depot|boot")
