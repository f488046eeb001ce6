// Drives ComfyUI's real frontend (Debian's Chromium, headless) over our workflow templates.
// For each template: load it from the server's template route, list missing nodes,
// overlapping nodes and the widgets our extension greys out, convert the graph with the
// frontend's own app.graphToPrompt(), and, for the demo forms (--queue), click Run and
// wait until every Save Image node shows its images. Saves a screenshot per
// template, and one of the template browser showing our pack. Each --search query is typed
// into the node search box (double-click on the empty canvas) and the first result added
// with Enter, as a user does. Prints {"node_search": [{"query", "results", "added"}]}, then
// one JSON line per template: {"name", "missing", "overlaps", "greyed", "prompt", "queued", "shown"}.
// usage: node load_templates.mjs <server url> <pack> <category title> <screenshot dir>
//        [--search <query>]... [--queue <name>]... <name>...
import { chromium } from "playwright-core";

const [url, pack, categoryTitle, shots, ...rest] = process.argv.slice(2);
const queue = new Set();
const searches = [];
const names = [];
for (let i = 0; i < rest.length; i++) {
  if (rest[i] === "--queue") queue.add(rest[++i]);
  else if (rest[i] === "--search") searches.push(rest[++i]);
  else names.push(rest[i]);
}

// The search box's result list: [display name] per option, top first.
const searchResults = () => [...document.querySelectorAll(".comfy-vue-node-search-box .p-autocomplete-option")]
  .map((li) => (li.querySelector(".option-display-name > div")?.textContent ?? "").replace(/\u00a0/g, " ").trim());

// Types ``query`` into the node search box on an empty canvas and presses Enter: returns the
// top five results as listed and the type of the node that Enter added.
// A fresh user directory makes the frontend open the template browser on first load
// (Comfy.TutorialCompleted unset), at a moment of its own: a double-click that lands while
// its dialog is up, or before it opens, never reaches the canvas. So close whatever dialog
// is open, double-click, and try again while no search box appears.
async function openSearchBox(page, shots) {
  const input = page.locator('input[id^="comfy-vue-node-search-box-input"]');
  for (let attempt = 1; ; attempt++) {
    for (let i = 0; i < 20 && await page.locator(".p-dialog:visible").count(); i++) {
      await page.keyboard.press("Escape");
      await page.waitForTimeout(250);
    }
    await page.evaluate(() => window.app.graph.clear());
    const canvas = await page.locator("#graph-canvas").boundingBox();
    await page.mouse.dblclick(canvas.x + canvas.width / 2, canvas.y + canvas.height / 2);
    try {
      await input.waitFor({ state: "visible", timeout: 5000 });
      return input;
    } catch (error) {
      if (attempt === 4) {
        await page.screenshot({ path: `${shots}/node_search_failed.png` });
        throw error;
      }
    }
  }
}

async function searchNode(page, query, shots) {
  const input = await openSearchBox(page, shots);
  await input.pressSequentially(query, { delay: 20 });
  // the list is searched 100 ms after the last key: wait until it has stood still for 500 ms
  let last = null;
  for (let still = 0, waited = 0; still < 5 && waited < 10000; waited += 100) {
    await page.waitForTimeout(100);
    const now = JSON.stringify(await page.evaluate(searchResults));
    still = now === last ? still + 1 : 0;
    last = now;
  }
  const results = JSON.parse(last).slice(0, 5);
  await page.keyboard.press("Enter");
  await page.waitForFunction(() => window.app.graph.nodes.length > 0, null, { timeout: 5000 }).catch(() => {});
  const added = await page.evaluate(() => window.app.graph.nodes.map((n) => n.type));
  await page.keyboard.press("Escape");
  await input.waitFor({ state: "hidden", timeout: 5000 });
  return { query, results, added };
}

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

  const nodeSearch = [];
  for (const query of searches) nodeSearch.push(await searchNode(page, query, shots));
  console.log(JSON.stringify({ node_search: nodeSearch }));

  // The template browser, on our pack's category: what a newcomer opens first.
  await page.evaluate(() => window.app.extensionManager.command.execute("Comfy.BrowseTemplates"));
  const category = page.getByText(categoryTitle, { exact: true }).first();
  await category.click({ timeout: 30000 });
  await page.waitForTimeout(2500);      // thumbnails load
  // each card scrolled into view (thumbnails load lazily), then: did its image load?
  const cards = await page.evaluate(async () => {
    const loaded = (card) => [...card.querySelectorAll("img")].some((img) => img.complete && img.naturalWidth > 0);
    const out = [];
    for (const card of document.querySelectorAll('[data-testid^="template-workflow-"]')) {
      card.scrollIntoView();
      for (let waited = 0; waited < 10000 && !loaded(card); waited += 100) {
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
      out.push({ name: card.dataset.testid.slice("template-workflow-".length), thumbnail: loaded(card) });
    }
    document.querySelector('[data-testid^="template-workflow-"]')?.scrollIntoView();
    return out;
  });
  await page.waitForTimeout(500);
  await page.screenshot({ path: `${shots}/template_browser.png` });
  console.log(JSON.stringify({ browser_cards: cards }));
  await page.keyboard.press("Escape");

  for (const name of names) {
    const result = await page.evaluate(async ([pack, name]) => {
      const response = await fetch(`/api/workflow_templates/${encodeURIComponent(pack)}/${encodeURIComponent(name)}.json`);
      const workflow = await response.json();
      await window.app.loadGraphData(workflow);
      const nodes = window.app.graph.nodes;
      const missing = nodes
        .filter((n) => n.has_errors || !window.LiteGraph.registered_node_types[n.type])
        .map((n) => n.type);
      const dialog = document.querySelector('.p-dialog[aria-labelledby="global-load-workflow-warning"]');
      if (dialog) missing.push("missing-nodes dialog: " + dialog.innerText.slice(0, 300));
      // node rectangles as drawn (the title bar sits above pos)
      const title = window.LiteGraph.NODE_TITLE_HEIGHT;
      const box = (n) => [n.pos[0], n.pos[1] - title, n.pos[0] + n.size[0], n.pos[1] + n.size[1]];
      const overlaps = [];
      for (let i = 0; i < nodes.length; i++) {
        for (let j = i + 1; j < nodes.length; j++) {
          const [a, b] = [box(nodes[i]), box(nodes[j])];
          if (a[0] < b[2] && b[0] < a[2] && a[1] < b[3] && b[1] < a[3]) {
            overlaps.push(`${nodes[i].title || nodes[i].type} / ${nodes[j].title || nodes[j].type}`);
          }
        }
      }
      const greyed = nodes.flatMap((n) => (n.widgets ?? []).filter((w) => w.disabled)
        .map((w) => `${n.title || n.type}.${w.name}`));
      const { output } = await window.app.graphToPrompt();
      return { name, missing, overlaps, greyed, prompt: output };
    }, [pack, name]);
    result.queued = false;
    result.shown = 0;
    if (queue.has(name)) {
      await page.locator('[data-testid="queue-button"]').first().click({ timeout: 30000 });   // the Run button
      result.queued = true;
      const saveNodes = await page.evaluate(() => window.app.graph.nodes.filter((n) => n.type === "SaveImage").length);
      await page.waitForFunction(
        () => window.app.graph.nodes.filter((n) => n.type === "SaveImage").every((n) => (n.imgs?.length ?? 0) > 0),
        null, { timeout: 300000, polling: 500 });
      result.shown = saveNodes;
      await page.waitForTimeout(500);
    }
    await page.evaluate(() => window.app.canvas.ds && window.app.graph.setDirtyCanvas(true, true));
    await page.waitForTimeout(500);
    await page.screenshot({ path: `${shots}/${name}.png` });
    console.log(JSON.stringify(result));
  }
} finally {
  await browser.close();
}
