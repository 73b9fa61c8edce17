# Query the running app through its /search endpoint (pip install gradio_client).
# Run from any folder: python docs/api_example.py [URL [PHOTO]]
import sys
from pathlib import Path

from gradio_client import Client, handle_file

url = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:7860"  # or the Space's name, "owner/space"
crops = Path(__file__).resolve().parents[2] / "shared" / "data" / "rparis6k" / "query_crops"
photo = sys.argv[2] if len(sys.argv) > 2 else crops / "paris_louvre_000135.jpg"

results, timings = Client(url).predict(
    image=handle_file(str(photo)),
    k=5,  # optional, default 20
    box="",  # optional crop "x0,y0,x1,y1" in pixels of the photo, default the whole photo
    api_name="/search",
)
for row in results:  # best first: {"rank", "id", "score", "thumbnail": URL, "preview": URL}
    print(row["rank"], row["id"], f"{row['score']:.3f}", row["thumbnail"])
print(f"embedding {timings['embed_ms']:.0f} ms, search {timings['search_ms']:.1f} ms")
