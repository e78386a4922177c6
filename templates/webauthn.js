// The one script of the break-glass pages, pinned by its hash in the page's
// Content-Security-Policy and served only on the pages that run a WebAuthn
// ceremony (sign in with a key, enrol a key) or copy a config line. It reads
// the ceremony's options from a JSON data block, runs it when the button is
// pressed, and posts the browser's answer in a hidden field of an ordinary
// form. Everything else on the pages works without it.
(function () {
	"use strict";
	function $(id) { return document.getElementById(id); }
	var status = $("bg-key-status");
	function say(msg) {
		if (status) { status.textContent = msg; status.hidden = false; }
	}
	var data = $("bg-key-options");
	// Whether the page offers another way in than the key (a code).
	var others = data && data.getAttribute("data-others") === "yes";
	function failure(e, creating) {
		switch (e && e.name) {
		case "NotAllowedError":
			// A sign-in with a key that holds none of the credentials asked
			// for (another account's key) ends here too: browsers do not
			// tell a page which keys are present.
			return "The security key did not answer in time, or the request was cancelled. Try again" +
				(others ? ", or use a code below." : ".") +
				(creating ? "" : " The same happens with a key that is not registered for this account.");
		case "InvalidStateError":
			return creating ? "This security key is already registered for this account." :
				"This security key is not one of this account's keys.";
		case "SecurityError":
			return "This page's address does not match the site the keys are registered for (webauthn_rp_id).";
		case "AbortError":
			return "The request was cancelled.";
		}
		return "The security key could not be used here (" + (e && e.name ? e.name : "error") + ").";
	}
	var start = $("bg-key-start");
	if (data && start) {
		var mode = data.getAttribute("data-ceremony");
		var P = window.PublicKeyCredential;
		var parse = P && (mode === "create" ? P.parseCreationOptionsFromJSON : P.parseRequestOptionsFromJSON);
		if (!P || !navigator.credentials || typeof parse !== "function") {
			say("This browser cannot use security keys or passkeys here." + (others ? " Use a code below." : ""));
			start.disabled = true;
		} else {
			start.hidden = false;
			start.disabled = false;
			start.addEventListener("click", function () {
				var form = $("bg-key-form");
				if (mode === "create" && form.reportValidity && !form.reportValidity()) {
					return;
				}
				var publicKey = parse.call(P, JSON.parse(data.textContent));
				start.disabled = true;
				say(mode === "create" ? "Touch your security key to register it." : "Touch your security key.");
				var call = mode === "create" ? navigator.credentials.create({ publicKey: publicKey }) :
					navigator.credentials.get({ publicKey: publicKey });
				call.then(function (cred) {
					$("bg-key-response").value = JSON.stringify(cred.toJSON());
					say("Checking…");
					form.submit();
				}, function (e) {
					start.disabled = false;
					say(failure(e, mode === "create"));
				});
			});
		}
	}
	var buttons = document.querySelectorAll("button[data-copy]");
	for (var i = 0; i < buttons.length; i++) {
		buttons[i].hidden = !navigator.clipboard;
		buttons[i].addEventListener("click", function (ev) {
			var b = ev.currentTarget;
			var text = $(b.getAttribute("data-copy")).textContent;
			navigator.clipboard.writeText(text).then(function () {
				say("Copied to the clipboard.");
			}, function () {
				say("Could not copy: select the text and copy it by hand.");
			});
		});
	}
})();
