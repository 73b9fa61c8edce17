# Query the running app through its /search endpoint (pip install gradio_client).
from gradio_client import Client, handle_file

# download_files=False: the result thumbnails stay on the server (their URLs are in the gallery).
client = Client("http://127.0.0.1:7860", download_files=False)  # or the Space's name, "owner/space"
gallery, results, timings = client.predict(
    image=handle_file("../shared/data/rparis6k/query_crops/paris_triomphe_000414.jpg"),
    k=5,  # optional, default 20
    box="",  # optional crop "x0,y0,x1,y1" in pixels of the image, default the whole image
    api_name="/search",
)
for row in results:  # best first: {"rank": 1, "id": "paris_triomphe_000086", "score": 0.976}
    print(row["rank"], row["id"], f"{row['score']:.3f}")
print(f"embedding {timings['embed_ms']:.0f} ms, search {timings['search_ms']:.1f} ms")
