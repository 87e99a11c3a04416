"""Write .dvc/offline_plots.html: the page template of `dvc plots show` / `dvc plots diff` with Vega, Vega-Lite and
Vega-Embed inlined, so the plots render on a machine without network (DVC's own template loads them from a CDN).

The libraries come from `vl-convert-python` (which bundles them; dev extra): `make plots-template` rewrites the file.
The versions are pinned below; .dvc/config points `plots.html_template` at the result.
"""

from __future__ import annotations

import sys
from pathlib import Path

VEGA_LITE = "5.21"  # DVC's plot specs declare the Vega-Lite v5 schema
OUT = Path(__file__).resolve().parents[1] / ".dvc" / "offline_plots.html"

LICENSE = """Vega, Vega-Lite and Vega-Embed (https://vega.github.io) are
Copyright (c) 2015-2024, University of Washington Interactive Data Lab. All rights reserved.
Redistribution and use in source and binary forms, with or without modification, are permitted provided that the
following conditions are met: 1. Redistributions of source code must retain the above copyright notice, this list of
conditions and the following disclaimer. 2. Redistributions in binary form must reproduce the above copyright notice,
this list of conditions and the following disclaimer in the documentation and/or other materials provided with the
distribution. 3. Neither the name of the copyright holder nor the names of its contributors may be used to endorse or
promote products derived from this software without specific prior written permission.
THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS "AS IS" AND ANY EXPRESS OR IMPLIED WARRANTIES,
INCLUDING, BUT NOT LIMITED TO, THE IMPLIED WARRANTIES OF MERCHANTABILITY AND FITNESS FOR A PARTICULAR PURPOSE ARE
DISCLAIMED. IN NO EVENT SHALL THE COPYRIGHT HOLDER OR CONTRIBUTORS BE LIABLE FOR ANY DIRECT, INDIRECT, INCIDENTAL,
SPECIAL, EXEMPLARY, OR CONSEQUENTIAL DAMAGES (INCLUDING, BUT NOT LIMITED TO, PROCUREMENT OF SUBSTITUTE GOODS OR
SERVICES; LOSS OF USE, DATA, OR PROFITS; OR BUSINESS INTERRUPTION) HOWEVER CAUSED AND ON ANY THEORY OF LIABILITY,
WHETHER IN CONTRACT, STRICT LIABILITY, OR TORT (INCLUDING NEGLIGENCE OR OTHERWISE) ARISING IN ANY WAY OUT OF THE USE
OF THIS SOFTWARE, EVEN IF ADVISED OF THE POSSIBILITY OF SUCH DAMAGE."""

# {refresh_tag} and {plot_divs} are DVC's placeholders; {scripts} (DVC's CDN <script> tags) is left out on purpose
PAGE = """<!DOCTYPE html>
<html>
<head>
    {{refresh_tag}}
    <meta charset="utf-8">
    <title>DVC Plot</title>
    <!-- Vega {vega}, Vega-Lite {vega_lite}, Vega-Embed {embed}, inlined: this page needs no network.
{license}
    -->
    <script type="text/javascript">
{bundle}
    </script>
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def main() -> None:
    import vl_convert as vlc

    bundle = vlc.javascript_bundle(vl_version=VEGA_LITE).replace("</script", "<\\/script")
    page = PAGE.format(vega=vlc.get_vega_version(), vega_lite=VEGA_LITE, embed=vlc.get_vega_embed_version(),
                       license=LICENSE, bundle=bundle)
    OUT.write_text(page)
    print(f"wrote {OUT} ({len(page):,} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
