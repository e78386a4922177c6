// The accounts of a handler: named break-glass credentials, each held by one
// person, with every hash `caddy hash-password` makes (bcrypt, argon2id)
// checked by Caddy's own comparers, and the lookup of an email that costs
// the same whichever account, if any, it names.

package breakglass

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"

	netmail "net/mail"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/caddyauth"

	"golang.org/x/crypto/bcrypt"
)

// AccountConfig is one break-glass account: one person's way in.
type AccountConfig struct {
	// The account's email address: what its holder types, and where its
	// codes go. Required. Placeholders are resolved at load.
	Email string `json:"email,omitempty"`

	// The account's password hash, as `caddy hash-password` prints it
	// (bcrypt or argon2id), or base64-encoded. Required. Placeholders
	// ({env.*}, {file.*}) are resolved at load.
	Hash string `json:"hash,omitempty"`

	// A base32 TOTP secret of this account (see the handler's
	// totp_secret).
	TOTPSecret string `json:"totp_secret,omitempty"`

	// After this many logins of this account, its hash stops working until
	// it is changed. Default: 0, unlimited.
	MaxUses int `json:"max_uses,omitempty"`

	// The user ID the upstream gets as {http.auth.user.sentinel_id}: a
	// value no real user's primary key can take, so that an application
	// behind the guard never acts as a real user. Default: "0".
	SentinelID string `json:"sentinel_id,omitempty"`

	// The second factors this account accepts after its password, any one
	// of them: "webauthn" (a security key or passkey of webauthn_keys),
	// "client_cert" (a verified TLS client certificate of client_certs or
	// client_cert_subjects), "totp" (needs totp_secret) and "email" (a code
	// mailed to the account's email). Without email, no code is ever
	// mailed. Default: every factor the account has the means for (email,
	// and totp, webauthn and client_cert when configured).
	SecondFactor []string `json:"second_factor,omitempty"`

	// SHA-256 fingerprints of the client certificates that are this
	// account's client_cert factor, 64 hex digits (colons allowed). The
	// site's TLS connection policy must verify client certificates
	// (client_auth with a trust pool): a certificate that Caddy did not
	// verify never counts.
	ClientCerts []string `json:"client_certs,omitempty"`

	// Subjects of the client certificates that are this account's
	// client_cert factor, exactly as Go's crypto/x509 prints them
	// ("CN=alice,OU=Ops,O=Example"): RFC 2253 escaping, the attributes in
	// Go's order (SERIALNUMBER, CN, OU, O, POSTALCODE, STREET, L, ST, C),
	// several values of one joined by "+". For a certificate with one
	// value each of CN, OU, O, L, ST, C, in the order most CAs write them
	// (C first, CN last), that is what `openssl x509 -noout -subject
	// -nameopt RFC2253` prints. Go prints any other attribute
	// (emailAddress, DC, UID, …) as an OID with the value in hex: a subject
	// naming one is refused at load; list the certificate's fingerprint
	// instead. Safe only when the trust pool is a CA of your own, which
	// issues each subject once.
	ClientCertSubjects []string `json:"client_cert_subjects,omitempty"`

	// The security keys and passkeys of this account (second_factor
	// webauthn), each as the enrolment page (?break_glass=enroll) printed
	// it.
	WebAuthnKeys []WebAuthnKeyConfig `json:"webauthn_keys,omitempty"`

	// The second-person control of this account's sign-ins; replaces the
	// handler's approval block for this account.
	Approval *ApprovalConfig `json:"approval,omitempty"`
}

// maxAccounts bounds the accounts of one handler: every sign-in compares
// the email with each of them.
const maxAccounts = 100

// account is one provisioned account.
type account struct {
	email      string   // as configured: where codes go
	emailValue any      // email, boxed once for the placeholder
	identity   string   // normalised email
	digest     [32]byte // of identity, for a constant-time comparison
	hash       []byte
	class      *hashClass // its algorithm and parameters
	// scope names the credential (email and hash) that sessions and codes
	// are bound to: a session or code of another account or handler, or of
	// this one before its hash was changed, is not accepted.
	scope string
	// credential names the same pair without the state's key, so that what
	// is kept in the config's storage (max_uses counts, the last TOTP step)
	// outlives a restart of state memory, whose key is new at each start.
	credential    string
	totpKey       []byte
	maxUses       int
	sentinelValue any // the sentinel ID, boxed once
	// factors are the second factors the account accepts.
	factors          factor
	certFingerprints [][sha256.Size]byte
	certSubjects     []string
	keys             []webauthnKey
	// userHandle is the account's WebAuthn user ID: of its email, so that
	// its keys outlive a change of its hash.
	userHandle []byte
	// approval, when set, makes a right second factor ask for a second
	// person instead of starting a session.
	approval *approvalPolicy
}

// hashClass is an algorithm with its parameters: hashes of one class cost
// the same to compare. fake is a hash of a random password of that class,
// made by makeFake once its memory is known to fit max_hash_memory.
type hashClass struct {
	name   string // e.g. "bcrypt cost 12", "argon2id m=47104,t=1,p=1"
	memory int64  // bytes one comparison takes, beyond bcrypt's few KiB
	hash   func(pw []byte) ([]byte, error)
	fake   []byte
}

// accountsOf is the handler's accounts as configured: accounts, or the
// one-account form (email, hash, totp_secret, max_uses, sentinel_id).
func accountsOf(h *Handler) ([]AccountConfig, error) {
	single := h.Email != "" || h.Hash != "" || h.TOTPSecret != "" || h.MaxUses != 0 || h.SentinelID != ""
	switch {
	case len(h.Accounts) > 0 && single:
		return nil, errors.New("accounts: give either accounts, or email and hash (one account), not both")
	case len(h.Accounts) > maxAccounts:
		return nil, fmt.Errorf("accounts: at most %d", maxAccounts)
	case len(h.Accounts) > 0:
		return h.Accounts, nil
	}
	return []AccountConfig{{Email: h.Email, Hash: h.Hash, TOTPSecret: h.TOTPSecret, MaxUses: h.MaxUses, SentinelID: h.SentinelID}}, nil
}

// setupAccounts provisions every account. An error names the account (by
// its position, and its email once known) and never shows a secret.
func setupAccounts(h *Handler, repl *caddy.Replacer) error {
	configs, err := accountsOf(h)
	if err != nil {
		return err
	}
	h.accounts, h.byScope = nil, map[string]*account{}
	seen := map[string]bool{}
	for i, c := range configs {
		name := "account " + strconv.Itoa(i+1)
		if len(configs) == 1 && len(h.Accounts) == 0 {
			name = ""
		}
		acc, err := newAccount(h, repl, c, name)
		if err != nil {
			return err
		}
		if seen[acc.identity] {
			return fmt.Errorf("account %s: given twice", acc.email)
		}
		for _, k := range acc.keys {
			if h.keyKnown(k.id) {
				return fmt.Errorf("account %s: webauthn_key %q: the same key is enrolled for another account", acc.email, k.name)
			}
		}
		seen[acc.identity] = true
		h.accounts = append(h.accounts, acc)
		h.byScope[acc.scope] = acc
	}
	h.classes, h.hashMem = h.classes[:0], 0
	for _, acc := range h.accounts {
		if !slices.Contains(h.classes, acc.class) {
			h.classes = append(h.classes, acc.class)
			// The comparisons of a sign-in run one after the other: it
			// takes at most the largest one's memory at once.
			h.hashMem = max(h.hashMem, acc.class.memory)
		}
	}
	if m := h.hashMem; m > h.app.MaxHashMemory {
		return fmt.Errorf("accounts: an argon2id hash takes %d MiB per comparison, more than max_hash_memory (%d MiB)", m>>20, h.app.MaxHashMemory>>20)
	}
	// Only now are the fakes made: making one takes its class's memory.
	for _, c := range h.classes {
		if err := c.makeFake(); err != nil {
			return err
		}
	}
	return nil
}

// newAccount provisions one account; name ("account 2") prefixes its errors
// until its email is known, which then names it.
func newAccount(h *Handler, repl *caddy.Replacer, c AccountConfig, name string) (*account, error) {
	field := func(f string) string {
		if name == "" {
			return f
		}
		return name + ": " + f
	}
	if c.Email == "" {
		return nil, errors.New(field("email: required"))
	}
	email, err := resolve(repl, c.Email)
	if err != nil {
		return nil, fmt.Errorf("%s: %v", field("email"), err)
	}
	addr, err := netmail.ParseAddress(email)
	if err != nil || addr.Address != email {
		return nil, fmt.Errorf("%s %q: not a plain email address", field("email"), email)
	}
	if name != "" {
		name = "account " + email
	}
	acc := &account{email: email, emailValue: email, identity: normalizeEmail(email), maxUses: c.MaxUses}
	acc.digest = sha256.Sum256([]byte(acc.identity))
	if c.Hash == "" {
		return nil, errors.New(field("hash: required (make one with `caddy hash-password`)"))
	}
	hash, err := resolve(repl, c.Hash)
	if err != nil {
		return nil, fmt.Errorf("%s: %v", field("hash"), err)
	}
	if acc.hash, acc.class, err = parseHash(hash); err != nil {
		return nil, errors.New(field(err.Error()))
	}
	acc.scope = h.state.scopeOf(acc.identity, acc.hash)
	acc.credential = credentialID(acc.identity, acc.hash)
	if c.TOTPSecret != "" {
		sec, err := resolve(repl, c.TOTPSecret)
		if err != nil {
			return nil, fmt.Errorf("%s: %v", field("totp_secret"), err)
		}
		if acc.totpKey, err = decodeTOTPSecret(sec); err != nil {
			return nil, errors.New(field(err.Error()))
		}
	}
	if c.MaxUses < 0 {
		return nil, fmt.Errorf("%s: must be at least 1, got %d", field("max_uses"), c.MaxUses)
	}
	sentinel := "0"
	if c.SentinelID != "" {
		if sentinel, err = resolve(repl, c.SentinelID); err != nil {
			return nil, fmt.Errorf("%s: %v", field("sentinel_id"), err)
		}
		if strings.ContainsFunc(sentinel, func(r rune) bool { return r < 0x20 || r == 0x7f }) || len(sentinel) > 64 {
			return nil, errors.New(field("sentinel_id: at most 64 characters, and no control character"))
		}
	}
	acc.sentinelValue = sentinel
	configured := factorEmail
	if acc.totpKey != nil {
		configured |= factorTOTP
	}
	for _, f := range c.ClientCerts {
		fp, err := parseFingerprint(f)
		if err != nil {
			return nil, errors.New(field(err.Error()))
		}
		acc.certFingerprints = append(acc.certFingerprints, fp)
	}
	for _, subj := range c.ClientCertSubjects {
		if err := checkCertSubject(subj); err != nil {
			return nil, errors.New(field(err.Error()))
		}
		acc.certSubjects = append(acc.certSubjects, subj)
	}
	if len(acc.certFingerprints)+len(acc.certSubjects) > 0 {
		configured |= factorClientCert
	}
	if acc.keys, err = newWebAuthnKeys(c.WebAuthnKeys); err != nil {
		return nil, errors.New(field(err.Error()))
	}
	if len(acc.keys) > 0 {
		configured |= factorWebAuthn
	}
	acc.userHandle = webauthnUserHandle(acc.identity)
	if acc.factors, err = factorsOf(c.SecondFactor, configured); err != nil {
		return nil, errors.New(field(err.Error()))
	}
	return acc, nil
}

// Caddy's comparers: the same as basic_auth uses.
var (
	bcryptComparer   caddyauth.Comparer = caddyauth.BcryptHash{}
	argon2idComparer caddyauth.Comparer = caddyauth.Argon2idHash{}
)

// comparerOf is the comparer of a hash parseHash accepted.
func comparerOf(hash []byte) caddyauth.Comparer {
	if strings.HasPrefix(string(hash), "$argon2id$") {
		return argon2idComparer
	}
	return bcryptComparer
}

// compareHash is a comparison with Caddy's comparer of the hash's algorithm.
func compareHash(hash, password []byte) error {
	ok, err := comparerOf(hash).Compare(hash, password)
	if err == nil && !ok {
		err = bcrypt.ErrMismatchedHashAndPassword
	}
	return err
}

// parseHash accepts a bcrypt or argon2id hash as `caddy hash-password`
// prints it, or base64-encoded, and returns its class. The error never
// shows the value.
func parseHash(s string) ([]byte, *hashClass, error) {
	b := []byte(s)
	if !strings.HasPrefix(s, "$") {
		if dec, err := base64.StdEncoding.DecodeString(s); err == nil {
			b = dec
		}
	}
	switch {
	case strings.HasPrefix(string(b), "$2"):
		cost, err := bcrypt.Cost(b)
		if err != nil || !wellFormedBcrypt(b) {
			return nil, nil, errors.New("hash: not a valid bcrypt hash")
		}
		c := classOf(fmt.Sprintf("bcrypt cost %d", cost), 0, func(pw []byte) ([]byte, error) {
			return bcrypt.GenerateFromPassword(pw, cost)
		})
		return b, c, nil
	case strings.HasPrefix(string(b), "$argon2id$"):
		parsed, key, err := caddyauth.DecodeHash(b)
		if err != nil {
			return nil, nil, errors.New("hash: not a valid argon2id hash")
		}
		// DecodeHash also takes what argon2 panics on (t=0, p=0, no key),
		// parameters without their names, and a salt or key too short to be
		// one (the reference implementation wants 8 bytes of salt).
		m, t, p, ok := argon2Params(b)
		salt := strings.Split(string(b), "$")[4]
		if !ok || t < 1 || p < 1 || len(key) < 16 || base64.RawStdEncoding.DecodedLen(len(salt)) < 8 {
			return nil, nil, errors.New("hash: not a valid argon2id hash")
		}
		// The fake has the same parameters (and key length): parsed holds
		// them, with this hash's salt, which its Hash reuses. So the fake of
		// the class, made once from the first hash of it loaded, shares that
		// hash's salt: harmless, its password is random and never kept.
		c := classOf(fmt.Sprintf("argon2id m=%d,t=%d,p=%d keylen %d", m, t, p, len(key)), int64(m)<<10, func(pw []byte) ([]byte, error) {
			return parsed.Hash(pw)
		})
		return b, c, nil
	}
	return nil, nil, errors.New("hash: not a bcrypt or argon2id hash (make one with `caddy hash-password`)")
}

// bcryptChars is bcrypt's base64 alphabet.
const bcryptChars = "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

// wellFormedBcrypt reports whether b is a hash as bcrypt makes it: $2a$,
// $2b$ or $2y$ (which Go's bcrypt reads alike; $2x$ is crypt_blowfish's
// buggy variant), two digits of cost, then 53 characters of bcrypt's
// alphabet. bcrypt.Cost reads only the prefix and the cost, and a hash it
// takes may fail to compare at once: its account would answer faster than
// an unknown email, and never sign in.
func wellFormedBcrypt(b []byte) bool {
	s := string(b)
	if len(s) != 60 || !slices.Contains([]string{"$2a$", "$2b$", "$2y$"}, s[:4]) || s[6] != '$' {
		return false
	}
	if !strings.ContainsRune("0123456789", rune(s[4])) || !strings.ContainsRune("0123456789", rune(s[5])) {
		return false
	}
	return !strings.ContainsFunc(s[7:], func(r rune) bool { return !strings.ContainsRune(bcryptChars, r) })
}

// argon2Params are the m (KiB), t and p of a hash DecodeHash took, each
// given with its name.
func argon2Params(b []byte) (m, t, p uint64, ok bool) {
	fields := strings.Split(strings.Split(string(b), "$")[3], ",") // three, as DecodeHash checked
	var v [3]uint64
	for i, name := range []string{"m=", "t=", "p="} {
		n, named := strings.CutPrefix(fields[i], name)
		var err error
		if v[i], err = strconv.ParseUint(n, 10, 32); !named || err != nil {
			return 0, 0, 0, false
		}
	}
	return v[0], v[1], v[2], true
}

// hashClasses caches the classes, each with its fake hash, made once per
// process.
var (
	hashClassMu sync.Mutex
	hashClasses = map[string]*hashClass{}
)

// classOf is the class of that name; hash makes a hash of it.
func classOf(name string, memory int64, hash func(pw []byte) ([]byte, error)) *hashClass {
	hashClassMu.Lock()
	defer hashClassMu.Unlock()
	if c, ok := hashClasses[name]; ok {
		return c
	}
	c := &hashClass{name: name, memory: memory, hash: hash}
	hashClasses[name] = c
	return c
}

// makeFake makes the class's fake hash, once.
func (c *hashClass) makeFake() error {
	hashClassMu.Lock()
	defer hashClassMu.Unlock()
	if c.fake != nil {
		return nil
	}
	pw := make([]byte, 32)
	_, _ = rand.Read(pw) // never fails (crypto/rand)
	fake, err := c.hash(pw)
	if err != nil {
		return fmt.Errorf("hash: making a fake hash of the same kind: %v", err)
	}
	c.fake = fake
	return nil
}

// lookup finds the account of an email in constant time: every account's
// digest is compared, whichever matches.
func (h *Handler) lookup(email string) *account {
	digest := sha256.Sum256([]byte(normalizeEmail(email)))
	found := -1
	for i, acc := range h.accounts {
		eq := subtle.ConstantTimeCompare(digest[:], acc.digest[:])
		found = subtle.ConstantTimeSelect(eq, i, found)
	}
	if found < 0 {
		return nil
	}
	return h.accounts[found]
}

// checkPassword compares the password once with each class of hash the
// handler's accounts use: with acc's own hash for its class, with the fake
// hash for the others (and for all of them when acc is nil). So a sign-in
// costs the same whether the email names an account, which one, or none.
// It reports whether acc's hash matched.
func (h *Handler) checkPassword(acc *account, pw []byte) bool {
	ok := false
	for _, c := range h.classes {
		hash := c.fake
		if acc != nil && acc.class == c {
			hash = acc.hash
		}
		err := h.compare(hash, pw)
		if acc != nil && acc.class == c {
			ok = err == nil
		}
	}
	return ok
}
