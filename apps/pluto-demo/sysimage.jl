# Build step of the pluto-demo image: the body of a Julia system image, what PackageCompiler's
# create_sysimg_object_file does, by hand (PackageCompiler is not available offline). Run as
#   julia --startup-file=no --cpu-target=<portable> -J <Julia's sys.so> --output-o pluto-sys.o sysimage.jl <precompile.jl>
# It loads every package of the image's environment (/opt/pluto-env: Pluto, PlutoUI, HTTP, ... and any a
# teacher added), runs the precompile statements traced while start.jl ran the notebook and its warm-up,
# and leaves no load or depot path behind (Base's __init__ sets them again at every start).
Base.reinit_stdio()
# Sys's own __init__ does not run while Julia writes an image: say where Julia and its standard library are
@eval Sys BINDIR = ccall(:jl_get_julia_bindir, Any, ())::String
@eval Sys STDLIB = abspath(Sys.BINDIR, "..", "share", "julia", "stdlib", string("v", VERSION.major, ".", VERSION.minor))
Base.init_load_path()
Base.init_depot_path()

const STATEMENTS = ARGS[1]

@eval Module() begin
    import Pkg
    project = Pkg.TOML.parsefile(Base.active_project())
    for (name, uuid) in sort(collect(project["deps"]))
        Base.require(Base.PkgId(Base.UUID(uuid), name))
    end
    # the statements name types by module path (Pluto.PlutoRunner.X, HTTP.Streams.Stream{...}): make every
    # loaded module a name in a scratch module and evaluate them there, skipping those that do not resolve
    # (the notebook's own workspace modules, closures of start.jl)
    area = Module()
    for (id, mod) in Base.loaded_modules
        id.name in ("Main", "Core", "Base") || Core.eval(area, :(const $(Symbol(id.name)) = $mod))
    end
    ok, failed = Ref(0), Ref(0)
    for line in eachline($STATEMENTS)
        startswith(line, "precompile(") || continue
        # Julia cannot cache a signature with `Vararg{T, N} where N`; a large N works (as PackageCompiler does)
        line = replace(line, r"Vararg{(.*?), N} where N" => s"Vararg{\1, 100}")
        try
            Base.include_string(area, line)
            ok[] += 1
        catch
            failed[] += 1
        end
    end
    println("sysimage: $(ok[]) precompile statements compiled, $(failed[]) skipped (they name code that exists only at run time)")
end

empty!(LOAD_PATH)
empty!(DEPOT_PATH)
