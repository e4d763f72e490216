// Opens a test page in headless Chromium (playwright-core, the system's browser: no browser
// download), waits for it to write its #result, and prints that text. Used by
// tests/web/test_verification_browser.py and bench/web_heads.py.
//
//   node drive-page.mjs URL [TIMEOUT_S] (env CHROMIUM: the browser, default /usr/bin/chromium)
import { chromium } from "playwright-core";

const [url, timeout = "120"] = process.argv.slice(2);
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium", args: ["--no-sandbox"] });
try {
  const page = await browser.newPage();
  page.on("console", (message) => process.stderr.write(`page: ${message.text()}\n`));
  page.on("pageerror", (error) => process.stderr.write(`page error: ${error.message}\n`));
  await page.goto(url);
  await page.waitForFunction(() => document.getElementById("result")?.textContent, null, { timeout: Number(timeout) * 1000 });
  process.stdout.write((await page.evaluate(() => document.getElementById("result").textContent)) + "\n");
} finally {
  await browser.close();
}
