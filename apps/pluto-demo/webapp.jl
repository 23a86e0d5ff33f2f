### A Pluto.jl notebook ###
# v0.17.7

using Markdown
using InteractiveUtils

# This Pluto notebook uses @bind for interactivity. When running this notebook outside of Pluto, the following 'mock version' of @bind gives bound variables a default value (instead of an error).
macro bind(def, element)
    quote
        local iv = try Base.loaded_modules[Base.PkgId(Base.UUID("6e696c72-6542-2067-7265-42206c756150"), "AbstractPlutoDingetjes")].Bonds.initial_value catch; b -> missing; end
        local el = $(esc(element))
        global $(esc(def)) = Core.applicable(Base.get, el) ? Base.get(el) : iv(el)
        el
    end
end

# ╔═╡ 8a1c0e10-0001-4a5e-9c1a-5f0a6d1e0001
md"""
# Compound growth

Move the **growth rate** slider: Julia recomputes how a population of 1,000 grows over 20 years.
This notebook was executed before you opened it.
"""

# ╔═╡ 8a1c0e10-0006-4a5e-9c1a-5f0a6d1e0006
using PlutoUI

# ╔═╡ 8a1c0e10-0002-4a5e-9c1a-5f0a6d1e0002
@bind rate Slider(0:0.5:15; default = 5, show_value = true)

# ╔═╡ 8a1c0e10-0003-4a5e-9c1a-5f0a6d1e0003
# Without a browser (the server-side run at start) PlutoUI gives `rate` the slider's default, 5.0.
trajectory = [1000 * (1 + rate / 100)^year for year in 0:20]

# ╔═╡ 8a1c0e10-0004-4a5e-9c1a-5f0a6d1e0004
let
	top = 1000 * 1.15^20
	points = join(["$(16 * (i - 1)),$(round(84 - (v - 1000) / (top - 1000) * 72; digits=1))" for (i, v) in enumerate(trajectory)], " ")
	HTML("""
	<div id="sp-result"><span class="sp-value">After 20 years at $(round(rate; digits=1))% growth:
	<b>$(round(Int, last(trajectory)))</b></span><br>
	<svg width="320" height="88"><polyline fill="none" stroke="#9558b2" stroke-width="3" points="$points"/></svg></div>
	""")
end

# ╔═╡ 8a1c0e10-0005-4a5e-9c1a-5f0a6d1e0005
md"*Served by swarmpool.*"

# ╔═╡ Cell order:
# ╟─8a1c0e10-0001-4a5e-9c1a-5f0a6d1e0001
# ╠═8a1c0e10-0006-4a5e-9c1a-5f0a6d1e0006
# ╠═8a1c0e10-0002-4a5e-9c1a-5f0a6d1e0002
# ╠═8a1c0e10-0003-4a5e-9c1a-5f0a6d1e0003
# ╟─8a1c0e10-0004-4a5e-9c1a-5f0a6d1e0004
# ╟─8a1c0e10-0005-4a5e-9c1a-5f0a6d1e0005
