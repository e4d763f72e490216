// Drives the demo page in headless Chromium (playwright-core, the system's browser: no browser
// download): opens URL, picks each photo in turn through the page's file input, and prints the
// page's #result JSON for each, one line a photo. Used by tests/web/test_demo_browser.py.
//
//   node drive-demo.mjs URL PHOTO... (env CHROMIUM: the browser, default /usr/bin/chromium)
import { chromium } from "playwright-core";

const [url, ...photos] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--no-sandbox"],
});
try {
  const page = await browser.newPage();
  page.on("console", (message) => process.stderr.write(`page: ${message.text()}\n`));
  page.on("pageerror", (error) => process.stderr.write(`page error: ${error.message}\n`));
  page.on("response", (r) => r.status() >= 400 && process.stderr.write(`page: HTTP ${r.status()} for ${r.url()}\n`));
  await page.goto(url);
  // Ready, or failed to start (the page then says why in #model and #result).
  await page.waitForFunction(() => !document.getElementById("photo").disabled || document.getElementById("result").textContent, null, { timeout: 60_000 });
  const failed = await page.evaluate(() => document.getElementById("result").textContent);
  if (failed) throw new Error(`the demo page did not start: ${failed}`);
  for (const photo of photos) {
    await page.setInputFiles("#photo", photo);
    const name = photo.split("/").pop();
    await page.waitForFunction(
      (n) => { const t = document.getElementById("result")?.textContent; return !!t && JSON.parse(t).photo === n; },
      name,
      { timeout: 60_000 },
    );
    const shown = await page.evaluate(() => ({
      result: JSON.parse(document.getElementById("result").textContent),
      verdict: document.getElementById("verdict").textContent,
      bytes: document.getElementById("bytes").textContent,
      stages: document.getElementById("stages").children.length,
    }));
    process.stdout.write(JSON.stringify(shown) + "\n");
  }
} finally {
  await browser.close();
}
