# Telemedicine: a consultation's media flows only for authorised staff and for patients who
# consented, and only to addresses on the hospital's own site. Everything else is denied.
#
# Decides every TURN Allocate, CreatePermission and ChannelBind and every room join,
# publish and subscribe (the input documents are in Relay's README, "Policy"). Data:
# telemedicine.json (users of TURN, staff roles, the site's address ranges).
package relay

import rego.v1

default allow := false

allow if count(reason) == 0

# Who asks: a TURN user, by the user part of its name (`EXPIRY:USER` for REST
# credentials), or a room endpoint, by the attributes the scheduling system gave it.
person := data.telemedicine.users[input.subject.name] if startswith(input.action, "turn.")

person := input.subject.attributes if startswith(input.action, "room.")

staff if person.role in data.telemedicine.staff_roles

consenting_patient if {
	person.role == "patient"
	person.consent == true
}

# Taking part at all (a relayed address, a seat in a room, someone's media) is for staff
# and for patients who consented.
reason contains "staff role or a consenting patient required" if {
	input.action in {"turn.allocate", "room.join", "room.subscribe"}
	not staff
	not consenting_patient
}

# A room's media is the patient's: none flows in a room without their recorded consent.
reason contains "patient consent required for this room" if {
	startswith(input.action, "room.")
	not input.object.room.attributes.patient_consent == true
}

# Media stays on site: TURN peers, and the address a subscriber's media would go to.
reason contains sprintf("media to %s would leave the site", [address]) if {
	some address in destinations
	not on_site(address)
}

reason contains "a subscriber's address must be known (give the endpoint its remote)" if {
	input.action == "room.subscribe"
	not input.object.destination.address
}

destinations contains input.object.peer.address if {
	input.action in {"turn.create_permission", "turn.channel_bind"}
}

destinations contains input.object.destination.address if input.action == "room.subscribe"

on_site(address) if {
	some range in data.telemedicine.site_ranges
	net.cidr_contains(range, address)
}
