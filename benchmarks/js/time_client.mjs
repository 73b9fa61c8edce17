// Times the app's endpoints through @gradio/client: node time_client.mjs URL QUERIES IMAGE...
// Prints one JSON object: per call, the wall time in ms and the app's own total_ms.
import { readFileSync } from "node:fs";
import { Client, handle_file } from "@gradio/client";

const [url, queries, ...images] = process.argv.slice(2);
const files = images.map((path) => new Blob([readFileSync(path)], { type: "image/jpeg" }));
const client = await Client.connect(url);
const search = async (i) => {
  const t0 = performance.now();
  const result = await client.predict("/search", { image: handle_file(files[i % files.length]), k: 20 });
  return { wall_ms: performance.now() - t0, total_ms: result.data[1].total_ms, first: result.data[0][0].id };
};
await search(0);  // warm: the first call also fetches the API description
const calls = [];
for (let i = 0; i < Number(queries); i++) calls.push(await search(i));
const matches = [];
for (let i = 0; i < Math.min(10, Number(queries)); i++) {
  const t0 = performance.now();
  await client.predict("/match", { image: handle_file(files[i % files.length]), id: calls[i].first });
  matches.push({ wall_ms: performance.now() - t0 });
}
console.log(JSON.stringify({ search: calls, match: matches }));
process.exit(0);
