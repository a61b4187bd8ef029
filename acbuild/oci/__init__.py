"""Docker and OCI images: references, the registry client, reading image layouts
and archives, and turning them into ACIs (see README, "Docker and OCI")."""
