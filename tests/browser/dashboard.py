"""The claro dashboard in headless Chromium (run by tests/browser.rs).

Environment: CLARO_URL (the dashboard), CLARO_TOKEN (an admin's token),
CLARO_VIEWER_TOKEN, CLARO_HOTFOLDER_IN (the `in/` folder of hotfolder
`proofs`, whose action fails files named bad* with a reason),
CLARO_SCREENSHOTS (a folder), CLARO_CHROMIUM (the browser), CLARO_CONTROL
(a folder through which it asks the test to restart the instance).

Every wait is bounded by one of the named timeouts below. Exits non-zero
with the reason on the first failed check.
"""

import os
import re
import sys
import time
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

# Timeouts, in seconds.
UI_S = 10  # a page shows what it fetched, or what an event announced
JOB_S = 30  # a short job runs to its end; a cancelled one stops
HOTFOLDER_S = 20  # a dropped file is picked up, processed or failed
PAUSED_LOOK_S = 2  # how long a paused hotfolder is watched to take nothing
LOGIN_S = 15  # the first page load and login
RESTART_S = 30  # the instance the page uses stops and starts again
STATS_S = 25  # the instance's next stats sample (every 10 s) sees the load
# Jobs that keep the cluster busy for the charts: more than its 12 slots.
LOAD_JOBS = 16
LOAD_JOB_MS = 12000
# Viewports the pages are drawn at (a laptop, a desktop).
LAPTOP = {"width": 1366, "height": 768}
DESKTOP = {"width": 1920, "height": 1080}

MARKUP = "<img src=x onerror=alert(1)>"
URL = os.environ["CLARO_URL"]
TOKEN = os.environ["CLARO_TOKEN"]
VIEWER_TOKEN = os.environ["CLARO_VIEWER_TOKEN"]
INBOX = Path(os.environ["CLARO_HOTFOLDER_IN"])
SHOTS = Path(os.environ["CLARO_SCREENSHOTS"])
CHROMIUM = os.environ.get("CLARO_CHROMIUM", "/usr/bin/chromium")
# Requests to the test (a file `restart` there: it stops the instance the
# page talks to, starts it again and answers with a file `restarted`).
CONTROL = Path(os.environ["CLARO_CONTROL"])

started = time.monotonic()
problems = []  # dialogs, script errors, CSP violations: each fails the run


def step(text):
    print(f"[{time.monotonic() - started:5.1f} s] {text}", flush=True)


def ms(seconds):
    return int(seconds * 1000)


def shot(page, name, full=True):
    # Toasts of the steps before (seconds apart here, minutes for a person)
    # would hide the page.
    page.evaluate("document.getElementById('toasts').replaceChildren()")
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full)
    step(f"screenshot {path.name}")


def watch(page):
    """Records what must never happen on a page."""
    def on_dialog(d):
        problems.append(f"a dialog opened: {d.type} {d.message!r}")
        d.dismiss()

    def on_console(msg):
        text = msg.text
        if msg.type == "error" and "Content Security Policy" in text:
            problems.append(f"CSP violation: {text}")

    page.on("dialog", on_dialog)
    page.on("pageerror", lambda e: problems.append(f"script error: {e}"))
    page.on("console", on_console)


def login(page, token):
    page.goto(URL, timeout=ms(LOGIN_S))
    expect(page.locator("#page-login")).to_be_visible(timeout=ms(LOGIN_S))
    page.fill("#token", token)
    page.click("#login-form button[type=submit]")
    expect(page.locator("#page-login")).to_be_hidden(timeout=ms(LOGIN_S))


def submit_job(page, code, attempts=None):
    """Submits `code` from the Jobs page's form; returns the new job's id."""
    page.click("#nav a[data-page=jobs]")
    # The form is inside the page: until the page shows, it reads as hidden
    # even when it is open (and its opening button then hidden), so a slow
    # machine would click a button that never shows.
    expect(page.locator("#page-jobs")).to_be_visible(timeout=ms(UI_S))
    if page.locator("#submit-form").is_hidden():
        page.click("#show-submit")
    page.fill("#submit-code", code)
    if attempts is not None:
        page.fill("#submit-attempts", str(attempts))
    page.click("#submit-form button[type=submit]")
    link = page.locator("#submit-result a")
    expect(link).to_be_visible(timeout=ms(UI_S))
    job_id = link.inner_text().strip()
    assert re.fullmatch(r"[0-9a-f]{20}", job_id), f"not a job id: {job_id!r}"
    return job_id


def job_row(page, job_id):
    return page.locator(f"#job-rows tr[data-id='{job_id}']")


def check_login_and_cluster(page):
    page.goto(URL, timeout=ms(LOGIN_S))
    expect(page.locator("#login-form")).to_be_visible(timeout=ms(LOGIN_S))
    page.fill("#token", "claro_" + "0" * 43)
    page.click("#login-form button[type=submit]")
    expect(page.locator("#login-error")).not_to_be_empty(timeout=ms(UI_S))
    step("a wrong token is refused: " + page.locator("#login-error").inner_text())
    page.fill("#token", "")
    page.locator("#login-error").evaluate("e => e.textContent = ''")
    shot(page, "login", full=False)
    page.fill("#token", TOKEN)
    page.click("#login-form button[type=submit]")
    expect(page.locator("#page-cluster")).to_be_visible(timeout=ms(LOGIN_S))
    expect(page.locator("#role")).to_have_text("admin", timeout=ms(UI_S))
    rows = page.locator("#servers tr")
    expect(rows).to_have_count(3, timeout=ms(UI_S))
    for name in ["srv1", "srv2", "srv3"]:
        expect(page.locator(f"#servers tr[data-server={name}]")).to_contain_text("yes", timeout=ms(UI_S))
    expect(page.locator("#cluster-cards")).to_contain_text("srv1", timeout=ms(UI_S))
    expect(page.locator("#live")).to_have_text("live", timeout=ms(UI_S))
    step("logged in; three servers, srv1 coordinates, the event stream is live")


def check_jobs(page):
    # A marker that a reload would lose: every change below arrives live.
    page.evaluate("window.__sameDocument = true")
    job_id = submit_job(page, 'log("hello from the form"); sleep_ms(1500); log("done"); 6 * 7')
    step(f"submitted {job_id} from the form")
    row = job_row(page, job_id)
    expect(row).to_be_visible(timeout=ms(UI_S))
    expect(row).to_have_attribute("data-state", "succeeded", timeout=ms(JOB_S))
    expect(row).to_contain_text("42")
    assert page.evaluate("window.__sameDocument === true"), "the page was reloaded"
    step("it turned succeeded without a reload")

    hostile = submit_job(page, f'log("{MARKUP}"); "{MARKUP}"')
    expect(job_row(page, hostile)).to_have_attribute("data-state", "succeeded", timeout=ms(JOB_S))
    failing = submit_job(page, 'throw "the printer is out of paper";', attempts=2)
    expect(job_row(page, failing)).to_have_attribute("data-state", "failed", timeout=ms(JOB_S))
    shot(page, "jobs")

    page.click(f"#job-rows tr[data-id='{job_id}'] a")
    expect(page.locator("#job-id")).to_have_text(job_id, timeout=ms(UI_S))
    expect(page.locator("#job-log")).to_contain_text("hello from the form", timeout=ms(UI_S))
    expect(page.locator("#job-profile")).to_contain_text("sleep_ms", timeout=ms(UI_S))
    expect(page.locator("#job-outcome")).to_contain_text("42")
    shot(page, "job")

    page.goto(f"{URL}#job/{hostile}")
    expect(page.locator("#job-outcome pre")).to_have_text(MARKUP, timeout=ms(UI_S))
    expect(page.locator("#job-log")).to_contain_text(MARKUP, timeout=ms(UI_S))
    assert page.locator("img").count() == 0, "markup in a result became an element"
    step("markup in a result and a log is shown as text")

    page.goto(f"{URL}#job/{failing}")
    expect(page.locator("#job-outcome .pre-error")).to_contain_text("out of paper", timeout=ms(UI_S))
    expect(page.locator("#job-retry")).to_be_visible()
    for attempt in ["1", "2"]:
        tried = page.locator(f"#job-attempts tr[data-attempt='{attempt}']")
        expect(tried).to_contain_text("failed", timeout=ms(UI_S))
        expect(tried).to_contain_text("out of paper")
    shot(page, "job-failed")
    step("a failed job's page shows its error and both attempts with theirs")

    page.goto(f"{URL}#job/{'0' * 20}")
    expect(page.locator("#job-missing")).to_contain_text("no job", timeout=ms(UI_S))
    expect(page.locator("#job-body")).to_be_hidden()


def check_cancel(page):
    long_job = submit_job(page, 'log("a long one"); progress(30); sleep_ms(60000); "never"')
    page.click("#submit-result a")
    expect(page.locator("#job-id")).to_have_text(long_job, timeout=ms(UI_S))
    expect(page.locator("#job-state")).to_have_text("running", timeout=ms(JOB_S))
    expect(page.locator("#job-progress .progress")).to_be_visible(timeout=ms(UI_S))
    # Live, from the server running it: the log so far and the progress.
    expect(page.locator("#job-log")).to_contain_text("a long one", timeout=ms(UI_S))
    expect(page.locator("#job-progress")).to_contain_text("30%", timeout=ms(UI_S))
    step("a running job's log and progress are followed live")
    page.wait_for_timeout(1200)  # the elapsed time moves on screen
    shot(page, "job-running")
    page.click("#job-cancel")
    expect(page.locator("#job-cancel")).to_have_text("Cancel job?")
    page.click("#job-cancel")
    expect(page.locator("#job-state")).to_have_text("cancelled", timeout=ms(JOB_S))
    expect(page.locator("#job-cancel")).to_be_hidden()
    step("a 60 s job was cancelled from its page")


def hotfolder_row(page):
    return page.locator("#hotfolder-rows tr[data-hotfolder=proofs]")


def check_hotfolders(page):
    (INBOX / "brochure.txt").write_text("print me\n")
    (INBOX / "bad-scan.pdf").write_text("not really a pdf\n")
    (INBOX / f"{MARKUP}.txt").write_text("a hostile name\n")
    page.click("#nav a[data-page=hotfolders]")
    row = hotfolder_row(page)
    expect(row).to_be_visible(timeout=ms(UI_S))
    row.click()
    detail = page.locator("#hotfolder-detail")
    expect(detail.locator(".error-row")).to_have_count(2, timeout=ms(HOTFOLDER_S))
    expect(detail.locator(".error-row").first).to_contain_text("not a PDF", timeout=ms(UI_S))
    expect(detail).to_contain_text("bad-scan.pdf")
    expect(detail).to_contain_text(MARKUP)
    expect(detail).to_contain_text("brochure.txt", timeout=ms(HOTFOLDER_S))
    expect(row.locator("td").nth(5)).to_have_text("2", timeout=ms(UI_S))
    assert page.locator("img").count() == 0, "a file name became an element"
    step("the hotfolder's errors show their reasons; a hostile file name is text")
    shot(page, "hotfolders")

    row.get_by_role("button", name="Pause").click()
    expect(row).to_contain_text("paused", timeout=ms(UI_S))
    (INBOX / "later.txt").write_text("wait for me\n")
    # The held file is counted as waiting (the coordinator's next scan).
    expect(row.locator("td").nth(2)).to_have_text("1", timeout=ms(HOTFOLDER_S))
    page.wait_for_timeout(ms(PAUSED_LOOK_S))
    assert (INBOX / "later.txt").exists(), "a paused hotfolder took a file"
    expect(detail).not_to_contain_text("later.txt")
    shot(page, "hotfolders-paused")
    row.get_by_role("button", name="Resume").click()
    expect(row).to_contain_text("active", timeout=ms(UI_S))
    expect(detail).to_contain_text("later.txt", timeout=ms(HOTFOLDER_S))
    step("paused: the file waited; resumed: it went through")
    check_hotfolder_form(page, detail)


def check_hotfolder_form(page, detail):
    page.click("#show-add-hotfolder")
    page.fill("#hf-name", "covers")
    # A placeholder inside a shell's code is refused (the CLI's check).
    page.fill("#hf-template", "sh -c 'cp {input} .'")
    page.click("#hotfolder-form button[type=submit]")
    expect(page.locator("#hotfolder-error")).to_contain_text("allow_shell", timeout=ms(UI_S))
    page.fill("#hf-template", "cp {input} {output_dir}/{name}")
    page.fill("#hf-stable", "200")
    page.click("#hotfolder-form button[type=submit]")
    expect(page.locator("#hotfolder-rows tr[data-hotfolder=covers]")).to_be_visible(timeout=ms(UI_S))
    inbox = INBOX.parent.parent / "covers" / "in"
    deadline = time.monotonic() + HOTFOLDER_S
    while not inbox.is_dir() and time.monotonic() < deadline:
        time.sleep(0.1)
    (inbox / "cover.pdf").write_text("a cover\n")
    expect(detail).to_contain_text("cover.pdf", timeout=ms(HOTFOLDER_S))
    step("a hotfolder added from the form took a file")
    detail.get_by_role("button", name="Edit").click()
    expect(page.locator("#hf-name")).to_have_value("covers")
    # As `claro hotfolder list` quotes it: the same argv.
    expect(page.locator("#hf-template")).to_have_value("cp '{input}' '{output_dir}/{name}'")
    page.fill("#hf-retries", "2")
    page.select_option("#hf-trigger", "marker")
    page.check("#hf-folders")
    page.click("#hotfolder-form button[type=submit]")
    retries = detail.locator(".fact", has_text="Retries")
    expect(retries).to_contain_text("2", timeout=ms(UI_S))
    expect(detail.locator(".fact", has_text="Taken when")).to_contain_text("marker")
    expect(detail.locator(".fact", has_text="Job folders")).to_contain_text("one job")
    shot(page, "hotfolder-edited")
    step("edited from its page: two retries, the marker trigger, job folders")


def check_scripts(page):
    page.click("#nav a[data-page=scripts]")
    page.click("#show-add-script")
    page.fill("#script-name", "make-proof")
    page.fill("#script-code", "let x = ;")
    page.click("#script-form button[type=submit]")
    expect(page.locator("#script-error")).to_be_visible(timeout=ms(UI_S))
    step("a syntax error is refused: " + page.locator("#script-error").inner_text().splitlines()[0])
    shot(page, "scripts-error", full=False)
    code = ('// Makes a proof sheet. <script>alert(1)</script>\n'
            'let pages = if ARGS.len() > 0 { parse_int(ARGS[0]) } else { 4 };\n'
            'log("proof with " + pages + " pages");\n'
            'pages * 2\n')
    page.fill("#script-code", code)
    page.click("#script-form button[type=submit]")
    view = page.locator("#script-view pre")
    expect(view).to_have_text(code, timeout=ms(UI_S))
    expect(page.locator("#script-rows")).to_contain_text("make-proof")
    assert page.locator("#script-view script").count() == 0
    shot(page, "scripts")


def check_settings(page):
    page.click("#nav a[data-page=settings]")
    for key, value in [("mail/relay", "smtp.example.com"), ("proof/dpi", "300"), ("banner", MARKUP)]:
        page.fill("#setting-key", key)
        page.fill("#setting-value", value)
        page.click("#setting-form button[type=submit]")
        expect(page.locator("#setting-rows")).to_contain_text(key, timeout=ms(UI_S))
    expect(page.locator("#setting-rows")).to_contain_text(MARKUP)
    expect(page.locator("#token-rows")).to_contain_text("browser-viewer", timeout=ms(UI_S))
    shot(page, "settings")
    row = page.locator("#setting-rows tr", has_text="proof/dpi")
    row.get_by_role("button", name="Delete").click()
    row.get_by_role("button", name="Delete?").click()
    expect(page.locator("#setting-rows")).not_to_contain_text("proof/dpi", timeout=ms(UI_S))
    step("settings set and deleted")


def check_viewer(browser):
    context = browser.new_context(viewport=LAPTOP)
    page = context.new_page()
    watch(page)
    login(page, VIEWER_TOKEN)
    expect(page.locator("#role")).to_have_text("viewer", timeout=ms(UI_S))
    page.click("#nav a[data-page=hotfolders]")
    expect(hotfolder_row(page)).to_be_visible(timeout=ms(UI_S))
    assert hotfolder_row(page).locator("button").count() == 0, "a viewer sees pause"
    page.click("#nav a[data-page=jobs]")
    expect(page.locator("#job-rows tr").first).to_be_visible(timeout=ms(UI_S))
    assert page.locator("#show-submit").is_hidden(), "a viewer sees the submit form"
    assert page.locator("#job-rows button").count() == 0, "a viewer sees job buttons"
    page.click("#nav a[data-page=settings]")
    expect(page.locator("#setting-rows")).to_contain_text("mail/relay", timeout=ms(UI_S))
    assert page.locator("#setting-form").is_hidden(), "a viewer sees the settings form"
    context.close()
    step("a viewer sees no buttons it may not use")


def check_restart(page):
    """The instance the page talks to restarts: the page says so, keeps what
    it showed, and asks for a login again (sessions live in the instance)."""
    page.click("#nav a[data-page=jobs]")
    first = page.locator("#job-rows tr").first
    expect(first).to_be_visible(timeout=ms(UI_S))
    (CONTROL / "restart").write_text("srv2")
    expect(page.locator("#live")).to_have_text("reconnecting", timeout=ms(RESTART_S))
    expect(page.locator("#page-jobs")).to_be_visible()
    assert page.locator("#job-rows tr[data-id]").count() > 0, "the page lost what it showed"
    shot(page, "reconnecting", full=False)
    step("the instance stopped: the page says reconnecting and keeps its table")
    deadline = time.monotonic() + RESTART_S
    while not (CONTROL / "restarted").exists():
        assert time.monotonic() < deadline, f"the instance did not restart in {RESTART_S} s"
        page.wait_for_timeout(200)
    expect(page.locator("#page-login")).to_be_visible(timeout=ms(RESTART_S))
    page.fill("#token", TOKEN)
    page.click("#login-form button[type=submit]")
    expect(page.locator("#live")).to_have_text("live", timeout=ms(RESTART_S))
    expect(page.locator("#job-rows tr").first).to_be_visible(timeout=ms(UI_S))
    step("it came back: logged in again, live again")


def check_down_server(page):
    """A server that is down is offered no coordinator move; a follower is."""
    (CONTROL / "stop").write_text("srv3")
    page.click("#nav a[data-page=cluster]")
    row = page.locator("#servers tr[data-server=srv3]")
    expect(row).not_to_contain_text("follower", timeout=ms(RESTART_S))
    expect(row.locator("button", has_text="Make coordinator")).to_have_count(0)
    follower = page.locator("#servers tr", has=page.locator("text=follower"))
    expect(follower.locator("button", has_text="Make coordinator")).to_have_count(1, timeout=ms(UI_S))
    shot(page, "server-down")
    step("a stopped server is offered no coordinator move; the follower is")


def make_load(page):
    """Fills every slot and queues a few more, through the page's own API client."""
    page.evaluate(
        """async ([count, ms]) => {
            for (let i = 0; i < count; i++) {
                await api("jobs", {method: "POST", json: {script: `sleep_ms(${ms}); ${i}`}});
            }
        }""",
        [LOAD_JOBS, LOAD_JOB_MS],
    )
    page.click("#nav a[data-page=jobs]")
    expect(page.locator("#job-rows tr[data-state=running]")).to_have_count(12, timeout=ms(JOB_S))
    expect(page.locator("#job-rows .progress").first).to_be_visible()
    shot(page, "jobs-running")
    step(f"{LOAD_JOBS} jobs of {LOAD_JOB_MS} ms: 12 running, the rest queued")


def wait_for_busy_sample(page):
    deadline = time.monotonic() + STATS_S
    while time.monotonic() < deadline:
        samples = page.evaluate("api('stats').then(s => s.samples)")
        if len(samples) >= 2 and any(s["running"] > 0 for s in samples):
            return
        page.wait_for_timeout(500)
    raise AssertionError(f"no stats sample saw the load within {STATS_S} s")


def card_value(page, label):
    card = page.locator("#cluster-cards .stat").filter(has=page.locator(".stat-label", has_text=label))
    return card.locator(".stat-value").inner_text().strip()


def check_cards_match_the_charts(page):
    # Running, Queued and Throughput are the charts' last sample: each time
    # the page draws, they equal one of the latest samples of /stats (the
    # page may have drawn just before a new one came).
    step("the cards show the charts' last sample")
    deadline = time.monotonic() + STATS_S
    seen = None
    while time.monotonic() < deadline:
        shown = (card_value(page, "Running"), card_value(page, "Queued"), card_value(page, "Throughput"))
        samples = page.evaluate("api('stats').then(s => s.samples)")[-3:]
        wanted = [(f"{s['running']} / ", str(s["queued"]), f"{s['jobs_per_s']:.2f}") for s in samples]
        if any(shown[0].startswith(r) and shown[1] == q and shown[2] == t for r, q, t in wanted):
            return
        seen = (shown, wanted)
        page.wait_for_timeout(500)
    raise AssertionError(f"the cards {seen[0]} are none of the latest samples {seen[1]}")


def check_cluster(browser, page):
    make_load(page)
    wait_for_busy_sample(page)
    page.click("#nav a[data-page=cluster]")
    expect(page.locator("#servers tr")).to_have_count(3, timeout=ms(UI_S))
    expect(page.locator("#chart-load svg")).to_be_visible(timeout=ms(UI_S))
    expect(page.locator("#cluster-cards")).to_contain_text("/ 12")
    # Jobs by state: the load's jobs, and the failed ones of the jobs page.
    expect(page.locator("#cluster-cards")).to_contain_text("succeeded", timeout=ms(UI_S))
    expect(page.locator("#cluster-cards")).to_contain_text("failed", timeout=ms(UI_S))
    check_cards_match_the_charts(page)
    shot(page, "cluster")
    step("the charts draw the load")
    context = browser.new_context(viewport=DESKTOP)
    big = context.new_page()
    watch(big)
    login(big, TOKEN)
    expect(big.locator("#servers tr")).to_have_count(3, timeout=ms(UI_S))
    expect(big.locator("#chart-rate svg")).to_be_visible(timeout=ms(UI_S))
    shot(big, "cluster-1920", full=False)
    context.close()


def main():
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        context = browser.new_context(viewport=LAPTOP)
        page = context.new_page()
        watch(page)
        try:
            check_login_and_cluster(page)
            check_jobs(page)
            check_cancel(page)
            check_hotfolders(page)
            check_scripts(page)
            check_settings(page)
            check_viewer(browser)
            check_cluster(browser, page)
            check_restart(page)
            check_down_server(page)
        except Exception:
            shot(page, "failure")
            raise
        finally:
            browser.close()
    if problems:
        print("problems:\n  " + "\n  ".join(problems))
        return 1
    step("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
