// Loads each of our workflow templates in ComfyUI's real frontend (Debian's Chromium,
// headless), checks that no node is missing, converts the graph with the frontend's own
// app.graphToPrompt(), and saves a screenshot. Prints one JSON line per template:
// {"name", "missing": [...], "prompt": <API prompt>}.
// usage: node load_templates.mjs <server url> <pack> <screenshot dir> <name>...
import { chromium } from "playwright-core";

const [url, pack, shots, ...names] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1600, height: 1000 } });
  await page.goto(url);
  await page.waitForFunction(() => window.app && window.app.extensionManager && window.app.graph, null, { timeout: 120000 });
  await page.waitForSelector(".p-blockui-mask", { state: "hidden", timeout: 60000 }).catch(() => {});
  for (const name of names) {
    const result = await page.evaluate(async ([pack, name]) => {
      const response = await fetch(`/api/workflow_templates/${pack}/${name}.json`);
      const workflow = await response.json();
      await window.app.loadGraphData(workflow);
      const missing = window.app.graph.nodes
        .filter((n) => n.has_errors || !window.LiteGraph.registered_node_types[n.type])
        .map((n) => n.type);
      const dialog = document.querySelector('.p-dialog[aria-labelledby="global-load-workflow-warning"]');
      if (dialog) missing.push("missing-nodes dialog: " + dialog.innerText.slice(0, 300));
      const { output } = await window.app.graphToPrompt();
      return { name, missing, prompt: output };
    }, [pack, name]);
    await page.waitForTimeout(500);
    await page.screenshot({ path: `${shots}/${name}.png` });
    console.log(JSON.stringify(result));
  }
} finally {
  await browser.close();
}
