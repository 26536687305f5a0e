"""Avatar enrolment: fine-tune the shipped generator on one recording of a person (`lipsync-train enroll`)."""
