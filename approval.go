// Second-person control: an approval request's record and its rules (who may
// decide it, once, before its deadline; what it resolves to after), the
// approvers' signed tokens, and its memory and storage backends.

package breakglass

import (
	"cmp"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
)

const (
	approvalsDir = storagePrefix + "approvals"
	// approvalAdmin decides as the host's own command, not as an approver.
	approvalAdmin = "admin"
	// approvalDoor decides as the door itself: a request that no alert
	// channel confirmed under require_alert is refused.
	approvalDoor = "break_glass"
	// approvalRetention is how long a request is kept past its deadline,
	// so that a late link or a status query still finds how it ended.
	approvalRetention = time.Hour

	onTimeoutGrant = "grant"
	onTimeoutDeny  = "deny"

	decisionApproved = "approved"
	decisionRefused  = "refused"
)

// The reasons a decision is refused, each its own so that the page (and
// the audit) can say which.
var (
	errApprovalNotFound = errors.New("no such approval request")
	errNotApprover      = errors.New("not an approver of this request")
	errOwnAccount       = errors.New("an approver cannot decide a request of their own account")
	errAlreadyDecided   = errors.New("the request has already been decided")
	errPastDeadline     = errors.New("the request is past its deadline")
	errTokenUsed        = errors.New("this approver's token has already been used")
	errNotGranted       = errors.New("the request does not grant a session")
	errClaimed          = errors.New("the request's session has already been issued")
	errNotTimedOut      = errors.New("the request did not time out, or its timeout is already recorded")
)

// approvalRecord is one sign-in waiting for an approver. The methods are the
// rules; both backends only load, store and lock records.
type approvalRecord struct {
	ID        string   `json:"id"`      // of the sign-in's flow (Handler.approvalID), hex
	Scope     string   `json:"scope"`   // the account's credential scope
	Account   string   `json:"account"` // the account's email
	Client    string   `json:"client"`
	Factor    string   `json:"factor"`        // the second factor that was given
	Key       string   `json:"key,omitempty"` // the security key's name, if one answered
	Reason    string   `json:"reason,omitempty"`
	Host      string   `json:"host,omitempty"`
	Approvers []string `json:"approvers"`
	Created   int64    `json:"created"`  // Unix nanoseconds
	Deadline  int64    `json:"deadline"` // Unix nanoseconds
	OnTimeout string   `json:"on_timeout"`
	Decision  string   `json:"decision,omitempty"`
	DecidedBy string   `json:"decided_by,omitempty"` // an approver, or approvalAdmin
	DecidedAt int64    `json:"decided_at,omitempty"`
	Used      []string `json:"used,omitempty"` // approvers whose token was used (lower case)
	// Claimed marks a granted request whose session was issued: once.
	Claimed bool `json:"claimed,omitempty"`
	// TimeoutNoted marks a timed-out request whose timeout was recorded
	// (logged, audited, alerted): once.
	TimeoutNoted bool `json:"timeout_noted,omitempty"`
}

// approvalState is where a request stands at a time.
type approvalState int

const (
	approvalPending approvalState = iota
	approvalGranted
	approvalRefused
	approvalTimedOutGranted // undecided at its deadline, on_timeout grant
	approvalTimedOutDenied  // undecided at its deadline, on_timeout deny
)

func (s approvalState) String() string {
	switch s {
	case approvalPending:
		return "pending"
	case approvalGranted:
		return "granted"
	case approvalRefused:
		return "refused"
	case approvalTimedOutGranted:
		return "timed out (granted)"
	case approvalTimedOutDenied:
		return "timed out (denied)"
	}
	return fmt.Sprintf("approvalState(%d)", int(s))
}

// grants reports whether the sign-in may have its session.
func (s approvalState) grants() bool { return s == approvalGranted || s == approvalTimedOutGranted }

// newApprovalRecord is rec (its request's fields and approvers) with the ID
// id, created at t with its deadline wait later, undecided.
func newApprovalRecord(id string, t time.Time, wait time.Duration, rec approvalRecord) approvalRecord {
	rec.ID = id
	rec.Created, rec.Deadline = t.UnixNano(), t.Add(wait).UnixNano()
	rec.Approvers = slices.Clone(rec.Approvers)
	rec.Decision, rec.DecidedBy, rec.DecidedAt, rec.Used, rec.Claimed, rec.TimeoutNoted = "", "", 0, nil, false, false
	return rec
}

// validApprovalID reports whether id has the form of an approval ID (32
// lowercase hex digits); an ID comes from a link, and names a storage key.
func validApprovalID(id string) bool { return isHex(id, 32) }

// state is where the request stands at t: a decided request stays decided;
// past the deadline an undecided one resolves by OnTimeout (anything but
// "grant" denies).
func (r *approvalRecord) state(t time.Time) approvalState {
	switch r.Decision {
	case decisionApproved:
		return approvalGranted
	case decisionRefused:
		return approvalRefused
	}
	if t.UnixNano() < r.Deadline {
		return approvalPending
	}
	if r.OnTimeout == onTimeoutGrant {
		return approvalTimedOutGranted
	}
	return approvalTimedOutDenied
}

// isApprover reports whether who is one of the request's approvers.
func (r *approvalRecord) isApprover(who string) bool {
	return slices.ContainsFunc(r.Approvers, func(a string) bool { return strings.EqualFold(a, who) })
}

// decide records the decision of approver (or approvalAdmin, or
// approvalDoor) at t. The first decision is final; an approver's token is
// spent by it.
func (r *approvalRecord) decide(t time.Time, approver string, approve bool) error {
	admin := approver == approvalAdmin || approver == approvalDoor
	if !admin {
		if strings.EqualFold(approver, r.Account) {
			return errOwnAccount
		}
		if !r.isApprover(approver) {
			return errNotApprover
		}
		if slices.Contains(r.Used, strings.ToLower(approver)) {
			return errTokenUsed
		}
	}
	switch r.state(t) {
	case approvalPending:
	case approvalGranted, approvalRefused:
		return errAlreadyDecided
	default:
		return errPastDeadline
	}
	r.Decision = decisionRefused
	if approve {
		r.Decision = decisionApproved
	}
	r.DecidedBy, r.DecidedAt = approver, t.UnixNano()
	if !admin {
		r.DecidedBy = strings.ToLower(approver)
		r.Used = append(r.Used, r.DecidedBy)
	}
	return nil
}

// claim marks a granted request's session as issued; it fails for a
// request that does not grant one, or whose session was issued already.
func (r *approvalRecord) claim(t time.Time) error {
	if !r.state(t).grants() {
		return errNotGranted
	}
	if r.Claimed {
		return errClaimed
	}
	r.Claimed = true
	return nil
}

// noteTimeout marks a request that timed out as recorded; it fails for one
// that did not time out, or whose timeout was recorded already.
func (r *approvalRecord) noteTimeout(t time.Time) error {
	if s := r.state(t); (s != approvalTimedOutGranted && s != approvalTimedOutDenied) || r.TimeoutNoted {
		return errNotTimedOut
	}
	r.TimeoutNoted = true
	return nil
}

// approvalRule changes a request at a time, or says why it may not.
type approvalRule func(r *approvalRecord, t time.Time) error

// decision is the rule of approver's decision.
func decision(approver string, approve bool) approvalRule {
	return func(r *approvalRecord, t time.Time) error { return r.decide(t, approver, approve) }
}

// approvalToken is the token of approver's link to rec: an HMAC under the
// approvals key of the request, the approver and the deadline, so it opens
// that request alone, for that approver alone, until the deadline.
func approvalToken(key []byte, rec approvalRecord, approver string) string {
	h := hmac.New(sha256.New, key)
	h.Write([]byte(rec.ID))
	h.Write([]byte{0})
	h.Write([]byte(strings.ToLower(approver)))
	h.Write([]byte{0})
	h.Write(binary.BigEndian.AppendUint64(nil, uint64(rec.Deadline)))
	return base64.RawURLEncoding.EncodeToString(h.Sum(nil))
}

// validToken reports whether token is approver's token to the request id
// whose deadline is exp: one HMAC, before any state is read. What it then
// allows (an approver of the request, before its deadline, once) is the
// record's rule (decide).
func validToken(key []byte, id, approver string, exp int64, token string) bool {
	return hmac.Equal([]byte(token), []byte(approvalToken(key, approvalRecord{ID: id, Deadline: exp}, approver)))
}

// approvalBackend is where approval requests are kept: in this process
// (approvalStore) or in Caddy's storage (storageApprovals). Errors other
// than the rules' come only from storage.
type approvalBackend interface {
	put(rec approvalRecord) error
	get(id string) (approvalRecord, bool, error)
	// update applies a rule to the request under its lock, stores it if
	// the rule allowed the change, and returns the request as it then is.
	update(id string, rule approvalRule) (approvalRecord, error)
	// list loads every request kept, oldest first (for status, and the
	// timeouts nobody saw).
	list() ([]approvalRecord, error)
	// sweep drops the requests approvalRetention past their deadline.
	sweep() error
}

// approvalStore keeps this process's approval requests.
type approvalStore struct {
	mu sync.Mutex
	m  map[string]approvalRecord
}

func newApprovalStore() *approvalStore {
	return &approvalStore{m: make(map[string]approvalRecord)}
}

// cloneApproval copies rec's slices, so that no caller shares them with
// the store.
func cloneApproval(rec approvalRecord) approvalRecord {
	rec.Approvers, rec.Used = slices.Clone(rec.Approvers), slices.Clone(rec.Used)
	return rec
}

func (s *approvalStore) put(rec approvalRecord) error {
	if !validApprovalID(rec.ID) {
		return errApprovalNotFound
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.m[rec.ID] = cloneApproval(rec)
	return nil
}

func (s *approvalStore) get(id string) (approvalRecord, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	rec, ok := s.m[id]
	return cloneApproval(rec), ok, nil
}

func (s *approvalStore) update(id string, rule approvalRule) (approvalRecord, error) {
	t := now()
	s.mu.Lock()
	defer s.mu.Unlock()
	rec, ok := s.m[id]
	if !ok {
		return approvalRecord{}, errApprovalNotFound
	}
	rec = cloneApproval(rec)
	if err := rule(&rec, t); err != nil {
		return rec, err
	}
	s.m[id] = rec
	return cloneApproval(rec), nil
}

func (s *approvalStore) list() ([]approvalRecord, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]approvalRecord, 0, len(s.m))
	for _, rec := range s.m {
		out = append(out, cloneApproval(rec))
	}
	sortApprovals(out)
	return out, nil
}

func (s *approvalStore) sweep() error {
	t := now()
	s.mu.Lock()
	defer s.mu.Unlock()
	dropWhere(s.m, func(rec approvalRecord) bool { return expiredApproval(rec, t) })
	return nil
}

func sortApprovals(recs []approvalRecord) {
	slices.SortFunc(recs, func(a, b approvalRecord) int {
		return cmp.Or(cmp.Compare(a.Created, b.Created), strings.Compare(a.ID, b.ID))
	})
}

// pendingApprovals are the requests of recs still waiting at t.
func pendingApprovals(recs []approvalRecord, t time.Time) []approvalRecord {
	return slices.DeleteFunc(recs, func(r approvalRecord) bool { return r.state(t) != approvalPending })
}

// unnotedTimeouts are the requests of recs that timed out by t and whose
// timeout is not recorded yet.
func unnotedTimeouts(recs []approvalRecord, t time.Time) []approvalRecord {
	return slices.DeleteFunc(recs, func(r approvalRecord) bool {
		s := r.state(t)
		return r.TimeoutNoted || (s != approvalTimedOutGranted && s != approvalTimedOutDenied)
	})
}

// expiredApproval reports whether rec is kept no longer at t.
func expiredApproval(rec approvalRecord, t time.Time) bool {
	return t.UnixNano() >= rec.Deadline+int64(approvalRetention)
}

// storageApprovals keeps each approval request in storage, one JSON file per
// request, changed under its storage lock so that two approvers deciding at
// once on two instances cannot both win, nor two instances both issue its
// session.
type storageApprovals struct {
	st certmagic.Storage
}

func approvalPath(id string) string { return approvalsDir + "/" + id }

func (s *storageApprovals) load(ctx context.Context, id string) (approvalRecord, bool, error) {
	var rec approvalRecord
	if !validApprovalID(id) {
		return rec, false, nil
	}
	b, err := s.st.Load(ctx, approvalPath(id))
	if notExist(err) {
		return rec, false, nil
	}
	if err != nil {
		return rec, false, err
	}
	if err := json.Unmarshal(b, &rec); err != nil {
		return rec, false, fmt.Errorf("%s: %v", approvalPath(id), err)
	}
	return rec, true, nil
}

func (s *storageApprovals) put(rec approvalRecord) error {
	if !validApprovalID(rec.ID) {
		return errApprovalNotFound
	}
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	ctx, cancel := opCtx()
	defer cancel()
	return s.st.Store(ctx, approvalPath(rec.ID), b)
}

func (s *storageApprovals) get(id string) (approvalRecord, bool, error) {
	ctx, cancel := opCtx()
	defer cancel()
	return s.load(ctx, id)
}

func (s *storageApprovals) update(id string, rule approvalRule) (rec approvalRecord, err error) {
	if !validApprovalID(id) {
		return rec, errApprovalNotFound
	}
	ctx, cancel := opCtx()
	defer cancel()
	name := approvalPath(id)
	if err := s.st.Lock(ctx, name); err != nil {
		return rec, err
	}
	defer func() { err = errors.Join(err, unlock(s.st, name)) }()
	rec, ok, err := s.load(ctx, id)
	if err != nil {
		return rec, err
	}
	if !ok {
		return rec, errApprovalNotFound
	}
	if err := rule(&rec, now()); err != nil {
		return rec, err
	}
	b, err := json.Marshal(rec)
	if err != nil {
		return rec, err
	}
	return rec, s.st.Store(ctx, name, b)
}

// all loads every stored request; one that cannot be read is skipped (it
// may have been swept meanwhile).
func (s *storageApprovals) all(ctx context.Context) ([]approvalRecord, error) {
	keys, err := s.st.List(ctx, approvalsDir, false)
	if notExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []approvalRecord
	for _, k := range keys {
		if rec, ok, err := s.load(ctx, strings.TrimPrefix(k, approvalsDir+"/")); err == nil && ok {
			out = append(out, rec)
		}
	}
	return out, nil
}

func (s *storageApprovals) list() ([]approvalRecord, error) {
	ctx, cancel := opCtx()
	defer cancel()
	recs, err := s.all(ctx)
	sortApprovals(recs)
	return recs, err
}

// sweep deletes the expired requests. No lock is needed: an expired request
// is past its deadline, so no decision stores it again.
func (s *storageApprovals) sweep() error {
	ctx, cancel := opCtx()
	defer cancel()
	recs, err := s.all(ctx)
	if err != nil {
		return err
	}
	t := now()
	for _, rec := range recs {
		if expiredApproval(rec, t) {
			if err := s.st.Delete(ctx, approvalPath(rec.ID)); err != nil && !notExist(err) {
				return err
			}
		}
	}
	return nil
}
