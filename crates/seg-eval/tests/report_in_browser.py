"""Opens a lungseg report.html from file:// in Debian's Chromium (driven by Playwright, no browser
download) and checks what a reader relies on: no JavaScript errors, a viewer per case, the wheel
and the keys change the shown slice (the picture changes), the overlay toggles, the window
presets and the contour/filled choice change it, every picture the page shows loads, the case
table sorts and every control is reachable by keyboard. Exits non-zero with the reason."""

import pathlib
import sys

from playwright.sync_api import sync_playwright

CHROMIUM = "/usr/bin/chromium"


def fail(message):
    print(f"FAIL: {message}")
    sys.exit(1)


def main(page_path):
    url = pathlib.Path(page_path).resolve().as_uri()
    errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
        page.on("console", lambda m: m.type == "error" and errors.append(f"console: {m.text}"))
        page.on("requestfailed", lambda r: errors.append(f"failed to load {r.url}"))
        page.goto(url, wait_until="load")
        seconds = page.evaluate("performance.now() / 1000")
        print(f"loaded in {seconds:.2f} s")

        viewers = page.locator("section.viewer")
        rows = page.locator("table.cases tbody tr")
        if viewers.count() == 0 or viewers.count() != rows.count():
            fail(f"{viewers.count()} viewers for {rows.count()} cases")
        print(f"viewers: {viewers.count()}")

        def shown(viewer):
            # Every visible picture of the viewer has loaded.
            broken = viewer.evaluate(
                "v => Array.from(v.querySelectorAll('img')).filter(i => !i.hidden)"
                ".filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)"
            )
            if broken:
                fail(f"pictures that did not load: {broken}")
            return viewer.locator(".stack").screenshot()

        def settle(viewer):
            viewer.evaluate(
                "v => Promise.all(Array.from(v.querySelectorAll('img')).filter(i => !i.hidden)"
                ".map(i => i.decode().catch(() => null)))"
            )

        toggled = 0
        for n in range(viewers.count()):
            viewer = viewers.nth(n)
            name = viewer.get_attribute("id")
            viewer.scroll_into_view_if_needed()
            settle(viewer)
            slice_of = lambda: int(viewer.get_attribute("data-slice"))
            start, before = slice_of(), shown(viewer)

            # Keys: the slice and the picture change.
            viewer.focus()
            page.keyboard.press("ArrowUp" if start == 0 else "ArrowDown")
            settle(viewer)
            if slice_of() == start:
                fail(f"{name}: an arrow key did not change the slice")
            if shown(viewer) == before:
                fail(f"{name}: an arrow key changed the slice number but not the picture")
            page.keyboard.press("ArrowDown" if start == 0 else "ArrowUp")
            settle(viewer)
            if slice_of() != start or shown(viewer) != before:
                fail(f"{name}: the opposite key did not bring slice {start} back")

            # The wheel over the picture.
            box = viewer.locator(".stack").bounding_box()
            page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            page.mouse.wheel(0, 100 if start == 0 else -100)
            page.wait_for_function(
                f"document.getElementById('{name}').dataset.slice != '{start}'", timeout=5000
            )
            settle(viewer)
            if shown(viewer) == before:
                fail(f"{name}: the wheel changed the slice number but not the picture")
            viewer.focus()
            page.keyboard.press("ArrowDown" if start == 0 else "ArrowUp")
            settle(viewer)

            # The start slice holds the reference's tumour (or, in a tumour-free case, the
            # prediction's, if any): hiding it changes the picture, and so does drawing it filled.
            case = page.evaluate(f"VIEWER_CASES[{n}]")
            layer = next((l for l in ("reference", "prediction") if start in case[l]), None)
            if layer:
                toggled += 1
                toggle = viewer.locator(f"input.show-{layer}")
                toggle.uncheck()
                settle(viewer)
                if shown(viewer) == before:
                    fail(f"{name}: hiding the {layer} did not change the picture")
                toggle.check()
                viewer.locator("select.style").select_option("_fill")
                settle(viewer)
                if shown(viewer) == before:
                    fail(f"{name}: filled overlays look like contours")
                viewer.locator("select.style").select_option("")
            viewer.locator("select.preset").select_option("-160,240")
            settle(viewer)
            if shown(viewer) == before:
                fail(f"{name}: the mediastinal window looks like the lung window")
            viewer.locator("select.preset").select_option("-1350,150")
            settle(viewer)
            if shown(viewer) != before:
                fail(f"{name}: back to the lung window, the picture is not the first one")

            # The next-lesion key goes to a lesion's slice, or stays where none is further on.
            lesions = page.evaluate(f"VIEWER_CASES[{n}].lesions")
            viewer.focus()
            page.keyboard.press("n")
            further = [k for k in lesions if k > start]
            if slice_of() != (further[0] if further else start):
                fail(f"{name}: N went to slice {slice_of()}, lesions at {lesions}")

            # Every control is reachable by keyboard.
            unreachable = viewer.evaluate(
                "v => Array.from(v.querySelectorAll('input, select, button'))"
                ".filter(c => c.tabIndex < 0 || c.disabled).length"
            )
            if unreachable:
                fail(f"{name}: {unreachable} controls cannot be reached by keyboard")

        if toggled == 0:
            fail("no case shows an overlay on its first slice: the toggles went untested")
        # The table sorts by Dice (predicted ml without references), both ways, from its header.
        headers = page.locator("table.cases thead th").all_inner_texts()
        dice_column = headers.index("Dice" if "Dice" in headers else "predicted ml")
        def column():
            return page.evaluate(
                f"Array.from(document.querySelectorAll('table.cases tbody tr'))"
                f".map(r => r.cells[{dice_column}].dataset.sort)"
            )
        button = page.locator("table.cases thead th button").nth(dice_column)
        button.click()
        up = [float(v) for v in column() if v != ""]
        button.click()
        down = [float(v) for v in column() if v != ""]
        if up != sorted(up) or down != sorted(down, reverse=True):
            fail(f"the table does not sort by {headers[dice_column]}: {up}, then {down}")
        # A case's row (and its link) focuses its viewer.
        page.locator("table.cases tbody tr").last.locator("td").nth(1).click()
        last = page.locator("table.cases tbody tr").last.locator("a.open-viewer").inner_text()
        try:
            page.wait_for_function(
                f"document.activeElement.id === 'viewer-{last}'", timeout=3000
            )
        except Exception:
            fail(f"a click on {last}'s row did not open its viewer")
        page.locator("a.open-viewer").first.click()
        try:
            page.wait_for_function("document.activeElement.className === 'viewer'", timeout=3000)
        except Exception:
            focused = page.evaluate("document.activeElement.className")
            fail(f"a case's link focused {focused!r}, not its viewer")
        browser.close()
    if errors:
        fail("; ".join(errors))
    print("the report works in Chromium")


if __name__ == "__main__":
    main(sys.argv[1])
